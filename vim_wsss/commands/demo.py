"""``vim-wsss demo``: the embedded default run (synthetic data, tiny ViM vs tiny DeiT on CPU, report)."""
from __future__ import annotations

import argparse

DEFAULT_CONFIG = 'synthetic_vim-mini_vs_deit-mini.py'


def default_config() -> str:
    """The demo's pipeline config, from the source tree (configs/ sits next to the package)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / 'configs' / 'pipeline' / DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: the demo runs from a source checkout (pip install -e .).')
    return str(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', default='work_dirs/demo', help='run folder (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='synthetic dataset seed')


def main(args: argparse.Namespace) -> int:
    from vim_wsss.pipeline import run_pipeline

    report = run_pipeline(default_config(), args.work_dir, {'data.seed': args.seed})
    print(f'report: {report.resolve()}')
    return 0
