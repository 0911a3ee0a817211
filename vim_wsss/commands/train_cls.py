"""``vim-wsss train-cls``: train the multi-label classifier of stage 1 (mmengine Runner; DDP under torchrun)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    parser.add_argument('config', help='classifier config, e.g. configs/cls/vim-s_voc12aug-448.py')
    parser.add_argument('--work-dir', help='output folder (default work_dirs/cls/<config name>)')
    parser.add_argument('--data-root', help='VOC root (re-points every dataloader)')
    parser.add_argument('--resume', action='store_true', help='continue from <work-dir>/last_checkpoint')
    parser.add_argument('--overwrite', action='store_true',
                        help="start over in a work dir that holds a previous run (deletes its checkpoints/metrics)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={}, help='key=value overrides')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help="'pytorch' under torchrun")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vim_wsss.wsss.train import read_cls_metrics, train_classifier

    options = dict(args.cfg_options, launcher=args.launcher)
    if args.data_root:
        options['data_root'] = args.data_root
    work_dir = args.work_dir or str(Path('work_dirs') / 'cls' / Path(args.config).stem)
    checkpoint = train_classifier(args.config, work_dir, options, resume=args.resume, overwrite=args.overwrite)
    history = read_cls_metrics(work_dir)
    if history:
        best = max(history, key=lambda h: h.get('cls/mAP', -1))
        print(f"best val mAP {best['cls/mAP']:.2f} at iter {best['iter']}")
    print(f'checkpoint: {checkpoint}')
    return 0
