"""``vim-wsss make-synthetic``: write the synthetic VOC-format dataset."""
from __future__ import annotations

import argparse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='dataset root to create (VOC2012-like layout); must be new, '
                        'empty, or an earlier synthetic dataset')
    parser.add_argument('--seed', type=int, default=0, help='generator seed (same seed -> same dataset)')
    parser.add_argument('--num-train', type=_positive, default=800, help='images in train_aug (default: %(default)s)')
    parser.add_argument('--num-val', type=_positive, default=150, help='images in val (default: %(default)s)')
    parser.add_argument('--size', type=_positive, default=64, help='image side in pixels, >= 16 (default: %(default)s)')
    parser.add_argument('--train-fraction', type=float, default=0.375,
                        help='share of train_aug also listed in train (default: %(default)s)')


def main(args: argparse.Namespace) -> int:
    from vim_wsss.data.synthetic import make_synthetic

    root = make_synthetic(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val, size=args.size,
                          train_fraction=args.train_fraction)
    print(f'synthetic VOC-format dataset: {root.resolve()}')
    return 0
