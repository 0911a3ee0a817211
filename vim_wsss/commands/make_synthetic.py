"""``vim-wsss make-synthetic``: write the synthetic VOC-format dataset."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='dataset root to create (VOC2012-like layout)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=800, help='images in train_aug')
    parser.add_argument('--num-val', type=int, default=150, help='images in val')
    parser.add_argument('--size', type=int, default=96, help='image side in pixels')


def main(args: argparse.Namespace) -> int:
    from vim_wsss.data.synthetic import make_synthetic

    root = make_synthetic(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val, size=args.size)
    print(f'synthetic VOC-format dataset: {root.resolve()}')
    return 0
