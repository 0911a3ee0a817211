"""``vim-wsss pipeline``: run a pipeline config end to end (cached stages, progress with ETA, report)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    parser.add_argument('config', help='pipeline config, e.g. configs/pipeline/voc12_vim-s_vs_deit-s.py')
    parser.add_argument('--work-dir', help="run folder (default: the config's work_dir)")
    parser.add_argument('--only', nargs='+', help='run only these backbones of the config (e.g. vim)')
    parser.add_argument('--verbose', action='store_true', help="print the stages' log lines (default: to stage.log)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='overrides, e.g. data.root=/data/VOC2012 seeds.thresholds=[0.3,0.4]')


def main(args: argparse.Namespace) -> int:
    from vim_wsss.pipeline import run_pipeline

    report = run_pipeline(args.config, args.work_dir, args.cfg_options, only=args.only, verbose=args.verbose)
    print(f'report: {report.resolve()}')
    return 0
