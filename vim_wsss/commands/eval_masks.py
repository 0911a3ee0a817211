"""``vim-wsss eval-masks``: score masks against GT, or sweep the background threshold of a seed cache."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('pred', help='mask folder (<name>.png), or a seed cache with --sweep')
    parser.add_argument('--data-root', required=True, help='VOC root')
    parser.add_argument('--split', default='train', help='images scored (default train, the VOC convention)')
    parser.add_argument('--mask-dir', default='SegmentationClassAug', help='GT folder under the root')
    parser.add_argument('--sweep', type=float, nargs='*',
                        help='treat PRED as a seed cache and sweep these background thresholds in [0, 1] '
                        '(none given: 0.10 .. 0.90 by 0.05)')
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
    from vim_wsss.wsss.evaluate import DEFAULT_THRESHOLDS, eval_masks, sweep_seeds

    if args.sweep is None:
        print(_table(eval_masks(args.pred, args.data_root, args.split, mask_dir=args.mask_dir)))
        return 0
    key = 'rw' if args.rw else 'maps'
    res = sweep_seeds(args.pred, args.data_root, args.split, args.tune_split, args.sweep or DEFAULT_THRESHOLDS,
                      keys=(key,), mask_dir=args.mask_dir, out_dir=args.out or args.pred)[key]
    print(_table(res['score']))
    print(f"background threshold {res['best_threshold']} (chosen on {res['tune_images']} images of {args.tune_split} "
          f"minus {args.split}, scored on {args.split}); curve: {res['png']}")
    return 0
