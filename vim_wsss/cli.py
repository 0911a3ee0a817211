"""``vim-wsss``: one entry point, one subcommand per stage.

Each subcommand lives in ``vim_wsss/commands/<name>.py`` with ``add_arguments(parser)`` and ``main(args) -> int``;
its module is imported only when that subcommand runs, so ``vim-wsss --help`` loads no stage's dependencies.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = {
    'demo': ('vim_wsss.commands.demo', 'generate the synthetic dataset and run the whole ViM-vs-DeiT comparison'),
    'pipeline': ('vim_wsss.commands.pipeline', 'run an end-to-end pipeline config (cached stages + report)'),
    'make-synthetic': ('vim_wsss.commands.make_synthetic', 'write the synthetic VOC-format dataset'),
    'train-cls': ('vim_wsss.commands.train_cls', 'train the multi-label classifier (stage 1)'),
    'make-seeds': ('vim_wsss.commands.make_seeds', 'cache per-class relevance maps (and random-walk maps)'),
    'make-pseudo': ('vim_wsss.commands.make_pseudo', 'turn cached maps into refined pseudo-mask PNGs'),
    'eval-masks': ('vim_wsss.commands.eval_masks', 'score seeds / pseudo-masks against GT, threshold sweep'),
    'train-seg': ('vim_wsss.commands.train_seg', 'train an mmseg head on pseudo-masks (stage 2)'),
    'test-seg': ('vim_wsss.commands.test_seg', 'evaluate a segmentation checkpoint (TTA / CRF optional)'),
    'explain': ('vim_wsss.commands.explain', 'relevance-map overlays for images'),
}

EPILOG = """typical workflow:
  vim-wsss demo                                    # synthetic data -> ViM vs DeiT end to end -> report
  vim-wsss make-synthetic --out data/synthetic     # just the synthetic VOC-format dataset
  vim-wsss pipeline configs/pipeline/CONFIG.py     # every stage of one config, cached and resumable
  stage by stage:  train-cls -> make-seeds -> make-pseudo -> eval-masks -> train-seg -> test-seg
  vim-wsss explain ...                             # relevance-map overlays for a few images

Run `vim-wsss COMMAND --help` for the options of a command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='vim-wsss', description='Weakly supervised segmentation from Vision Mamba implicit attention '
        '(DeiT baseline).', epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from vim_wsss import __version__
    parser.add_argument('--version', action='version', version=f'vim_wsss {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # --help / --version / error for unknown commands
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f'vim-wsss {name}: not available in this installation ({module_name} is missing); '
              f'see `vim-wsss --help` for the commands, or reinstall with `pip install -e .`.', file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f'vim-wsss {name}', description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.main(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        from vim_wsss.data.voc import DataError

        if not isinstance(err, (DataError, FileNotFoundError, FileExistsError)):
            raise  # a plain ValueError is a bug: keep the traceback
        print(f'vim-wsss {name}: error: {err}', file=sys.stderr)  # user-input errors name the file and the fix
        return 1
    except KeyboardInterrupt:
        print(f'vim-wsss {name}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
