"""``vim-wsss eval-masks``: score masks against GT, or sweep the background threshold of a seed cache."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('pred', help='mask folder (<name>.png), or a seed cache with --sweep')
    parser.add_argument('--data-root', required=True, help='VOC root')
    parser.add_argument('--split', default='train', help='images scored (default train, the VOC convention)')
    parser.add_argument('--mask-dir', default='SegmentationClassAug', help='GT folder under the root')
    parser.add_argument('--sweep', type=float, nargs='*',
                        help='treat PRED as a seed cache and sweep these background thresholds')
    parser.add_argument('--tune-split', default='train_aug',
                        help='with --sweep: the threshold is chosen on TUNE_SPLIT minus SPLIT and scored on SPLIT')
    parser.add_argument('--rw', action='store_true', help='with --sweep: use the random-walk maps')
    parser.add_argument('--out', help='with --sweep: where the curve PNG and JSON go (default PRED)')


def _table(result: dict) -> str:
    from vim_wsss.data.voc import VOC_CLASSES

    lines = [f'{"class":<12}  IoU (%)'] + [f'{c:<12}  {v:6.2f}' if v is not None else f'{c:<12}     n/a'
                                           for c, v in zip(VOC_CLASSES, result['iou'])]
    return '\n'.join(lines + [f'{"mIoU":<12}  {result["miou"]:6.2f}'])


def main(args: argparse.Namespace) -> int:
    from vim_wsss.data.voc import read_split
    from vim_wsss.wsss.evaluate import eval_masks, sweep_bg_threshold

    if args.sweep is None:
        print(_table(eval_masks(args.pred, args.data_root, args.split, mask_dir=args.mask_dir)))
        return 0
    thresholds = args.sweep or [round(0.05 * i, 2) for i in range(2, 19)]
    score = read_split(args.data_root, args.split)
    tune = sorted(set(read_split(args.data_root, args.tune_split)) - set(score))
    res = sweep_bg_threshold(args.pred, args.data_root, thresholds, tune, score, mask_dir=args.mask_dir,
                             maps_key='rw' if args.rw else 'maps', out_dir=args.out or args.pred,
                             tag='seeds_rw' if args.rw else 'seeds')
    print(_table(res['score']))
    print(f"background threshold {res['best_threshold']} (chosen on {len(tune)} images of {args.tune_split} minus "
          f"{args.split}, scored on {args.split}); curve: {res['png']}")
    return 0
