"""``vim-wsss test-seg``: evaluate a segmentation checkpoint and print the per-class IoU table."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir', help='output folder (default work_dirs/<config name>)')
    parser.add_argument('--data-root', help='VOC root (overrides every dataloader)')
    parser.add_argument('--tta', action='store_true', help='multi-scale + flip test-time augmentation')
    parser.add_argument('--crf', action='store_true', help='dense-CRF post-processing')
    parser.add_argument('--out', help='write predicted masks (index PNGs) here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})


def format_table(metrics: dict) -> str:
    """Per-class IoU table from ``IoU.<class>`` entries."""
    rows = [(k[4:], v) for k, v in metrics.items() if k.startswith('IoU.')]
    width = max([len(n) for n, _ in rows] + [5])
    lines = [f'{"class":<{width}}  IoU (%)'] + [f'{n:<{width}}  {v:6.2f}' for n, v in rows]
    lines.append(f'{"mIoU":<{width}}  {metrics["mIoU"]:6.2f}')
    return '\n'.join(lines)


def main(args: argparse.Namespace) -> int:
    from vim_wsss.seg.train import data_options, test_seg

    options = data_options(args.data_root) if args.data_root else {}
    options.update(args.cfg_options)
    metrics = test_seg(args.config, args.checkpoint, args.work_dir, options, tta=args.tta, crf=args.crf,
                       out_dir=args.out)
    print(format_table(metrics))
    return 0
