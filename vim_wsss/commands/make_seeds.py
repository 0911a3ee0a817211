"""``vim-wsss make-seeds``: cache per-class relevance maps (and random-walk maps) of a trained classifier.

Under ``torchrun --nproc-per-node N --no-python vim-wsss make-seeds ...`` each rank explains its share of the images
(one GPU per rank) and rank 0 prints the summary of all of them.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='the classifier config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='classifier checkpoint (best_*.pth of train-cls)')
    parser.add_argument('--data-root', required=True, help='VOC root')
    parser.add_argument('--split', default='train_aug', help='images to explain (default train_aug)')
    parser.add_argument('--out', required=True, help='cache folder (one .npz per image; resumable)')
    parser.add_argument('--method', help="attribution method (default: 'ours' for ViM, 'transformer_attr' for DeiT)")
    parser.add_argument('--start-layer', type=int, help='first layer of the rollout')
    parser.add_argument('--scales', type=float, nargs='+', default=[1.0],
                        help='input scales averaged into the maps; must include 1.0 (e.g. --scales 1.0 1.5)')
    parser.add_argument('--flip', action='store_true', help='average with the flipped image')
    parser.add_argument('--no-rw', action='store_true', help='skip the affinity random walk')
    parser.add_argument('--batch-size', type=int, default=8, help='images per forward pass (>= 1)')
    parser.add_argument('--device', default='cuda' if _cuda() else 'cpu')
    parser.add_argument('--skip-bad', action='store_true',
                        help='skip images that cannot be read (listed in the summary) instead of stopping')
    parser.add_argument('--overwrite', action='store_true',
                        help='OUT holds maps made with other parameters: delete them and start again')


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(args: argparse.Namespace) -> int:
    from vim_wsss.dist import shares_text
    from vim_wsss.wsss.seeds import make_seeds

    result = make_seeds(args.config, args.checkpoint, args.data_root, args.split, args.out, method=args.method,
                        start_layer=args.start_layer, scales=args.scales, flip=args.flip, rw=not args.no_rw,
                        batch_size=args.batch_size, device=args.device, skip_bad=args.skip_bad,
                        overwrite=args.overwrite, trust=getattr(args, 'trust_checkpoint', None))
    if result['rank'] != 0:
        return 0
    print(f"maps: {result['written']} written ({result['redone']} of them redone: damaged), "
          f"{result['skipped_done']} already done, {result['skipped_no_label']} without a positive label (skipped), "
          f"{len(result['skipped_bad'])} unreadable (skipped){shares_text(result.get('shares'))} "
          f"-> {result['out_dir']}")
    return 0
