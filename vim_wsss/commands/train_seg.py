"""``vim-wsss train-seg``: train an mmseg head (on pseudo-masks, or GT for the upper bound)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    parser.add_argument('config', help='seg config, e.g. configs/seg/segformer_vim-s_1xb8-20k_voc12aug-448.py')
    parser.add_argument('--work-dir', help='output folder (default work_dirs/<config name>)')
    parser.add_argument('--data-root', help='VOC root (overrides every dataloader)')
    parser.add_argument('--pseudo-dir', help='pseudo-mask folder used as training targets')
    parser.add_argument('--resume', action='store_true', help='continue from <work-dir>/last_checkpoint')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={}, help='key=value overrides')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help="'pytorch' under torchrun (tools/dist_train.sh)")


def main(args: argparse.Namespace) -> int:
    from vim_wsss.seg.train import data_options, train_seg

    options = data_options(args.data_root, args.pseudo_dir) if args.data_root else {}
    if args.pseudo_dir and not args.data_root:
        options['train_dataloader.dataset.data_prefix.seg_map_path'] = args.pseudo_dir
    options.update(args.cfg_options)
    work_dir = args.work_dir or None
    checkpoint = train_seg(args.config, work_dir, options, resume=args.resume, launcher=args.launcher)
    print(f'checkpoint: {checkpoint}')
    return 0
