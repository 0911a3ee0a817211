"""``vim-wsss``: one entry point, one subcommand per stage.

Each subcommand lives in ``vim_wsss/commands/<name>.py`` with ``add_arguments(parser)`` and ``main(args) -> int``;
its module is imported only when it runs, so ``vim-wsss --help`` is instant.
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
  vim-wsss demo                                   # everything, on the embedded synthetic dataset
  vim-wsss pipeline configs/pipeline/voc12_vim-s_vs_deit-s.py
  vim-wsss train-cls configs/cls/vim-s_voc12aug-448.py
  vim-wsss make-seeds CLS_CONFIG --checkpoint CKPT --out work_dirs/maps
  vim-wsss make-pseudo ... ; vim-wsss train-seg SEG_CONFIG ; vim-wsss test-seg SEG_CONFIG CKPT
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
        print(f'vim-wsss {name}: not available in this installation ({module_name} missing).', file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f'vim-wsss {name}', description=help_text)
    module.add_arguments(sub)
    return int(module.main(sub.parse_args(rest)) or 0)


if __name__ == '__main__':
    sys.exit(main())
