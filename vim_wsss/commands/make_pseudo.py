"""``vim-wsss make-pseudo``: turn cached maps into refined pseudo-mask PNGs (resumable, multi-process).

Under ``torchrun --nproc-per-node N --no-python vim-wsss make-pseudo ...`` each rank labels its share of the
images (with its own ``--workers``) and rank 0 prints the summary of all of them.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('seeds', help='map cache written by make-seeds')
    parser.add_argument('--data-root', required=True, help='VOC root (images from JPEGImages)')
    parser.add_argument('--split', default='train_aug', help='images to label (default train_aug)')
    parser.add_argument('--out', required=True, help='pseudo-mask folder (palette PNGs, 0..20 and 255)')
    parser.add_argument('--bg-threshold', type=float, required=True,
                        help='background score in [0, 1] (see eval-masks --sweep)')
    parser.add_argument('--high', type=float,
                        help='confident-foreground threshold in [0, 1] (with --low: ignore band -> 255)')
    parser.add_argument('--low', type=float, help='confident-background threshold in [0, 1], <= --high')
    parser.add_argument('--refine', nargs='*', default=['rw', 'par', 'crf'],
                        help="refinement steps in order, from 'rw' 'par' 'crf' (none = raw seeds)")
    parser.add_argument('--workers', type=int, default=0, help='processes (0 = in this process)')
    parser.add_argument('--skip-bad', action='store_true',
                        help='skip images that cannot be read (no mask; listed in the summary) instead of stopping')
    parser.add_argument('--overwrite', action='store_true',
                        help='OUT holds masks made with other parameters: delete them and start again')


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vim_wsss.data.voc import read_split
    from vim_wsss.dist import shares_text
    from vim_wsss.wsss.pseudo import make_pseudo

    names = read_split(args.data_root, args.split)
    out = make_pseudo(args.seeds, Path(args.data_root) / 'JPEGImages', names, args.out, args.bg_threshold,
                      high=args.high, low=args.low, refine=args.refine, workers=args.workers,
                      overwrite=args.overwrite, skip_bad=args.skip_bad)
    if out['rank'] != 0:
        return 0
    skipped = out['skipped_bad']
    print(f"pseudo-masks: {out['written']} written ({out['redone']} of them redone: damaged), "
          f"{out['skipped_done']} already done, {len(skipped)} unreadable images skipped"
          f"{' (' + ', '.join(skipped[:5]) + ')' if skipped else ''}{shares_text(out.get('shares'))} "
          f"-> {out['out_dir']}")
    return 0
