"""``vim-wsss``: one entry point, one subcommand per stage.

Each subcommand lives in ``vim_wsss/commands/<name>.py`` with ``add_arguments(parser)`` and ``main(args) -> int``;
its module is imported only when that subcommand runs, so ``vim-wsss --help`` loads no stage's dependencies.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
import traceback
from typing import Any, List, Optional

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

#: Subcommands that read a checkpoint: they get --trust-checkpoint (see vim_wsss.models.checkpoint).
READS_CHECKPOINTS = ('pipeline', 'train-cls', 'make-seeds', 'train-seg', 'test-seg', 'explain')
TRUST_ENV = 'VIM_WSSS_TRUST_CHECKPOINT'  # the same name as vim_wsss.models.checkpoint.TRUST_ENV (not imported:
DEBUG_ENV = 'VIM_WSSS_DEBUG'             # `vim-wsss --help` loads no stage's dependencies)
#: OS errors that are about the user's files or disk, with the fix.
USER_ERRNOS = {
    errno.ENOSPC: 'free disk space (or choose another --out / --work-dir) and re-run: finished outputs are kept',
    errno.EDQUOT: 'free disk space (or choose another --out / --work-dir) and re-run: finished outputs are kept',
    errno.EFBIG: 'the file system (or a ulimit -f) refuses a file this large; free space or raise the limit',
    errno.EROFS: 'choose a writable --out / --work-dir',
    errno.EACCES: 'check the permissions, or choose another --out / --work-dir',
    errno.EPERM: 'check the permissions, or choose another --out / --work-dir',
    errno.ENOTDIR: 'a path component is a file, not a folder; fix the path',
    errno.EISDIR: 'a folder was given where a file is expected; fix the path',
}
_BUILD_PREFIX = re.compile(r'(class `\w+` in [\w./-]+: )+')

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


def _add_common_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name in READS_CHECKPOINTS:
        parser.add_argument('--trust-checkpoint', action='store_true',
                            help='load checkpoints that hold types the safe loader refuses (unpickling them can run '
                                 f'code; only for files you made or trust); same as {TRUST_ENV}=1')
    parser.add_argument('--debug', action='store_true',
                        help=f'show the traceback of input errors too (or set {DEBUG_ENV}=1)')


def user_error_message(err: BaseException) -> Optional[str]:
    """One line for an error about user input (bad file, value, folder), None for anything else (a bug)."""
    from vim_wsss.data.voc import DataError
    from vim_wsss.models.checkpoint import CheckpointError

    if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, FileExistsError)):
        if err.errno not in USER_ERRNOS:
            return None
        where = f' ({err.filename})' if err.filename else ''
        return f'{err.strerror or err}{where}; {USER_ERRNOS[err.errno]}'
    if not isinstance(err, (DataError, CheckpointError, FileNotFoundError, FileExistsError)):
        return None
    text = ' '.join(str(err).split())  # one line
    return _BUILD_PREFIX.sub('', text)  # mmengine's registry prefixes "class `X` in module: " when building


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
    _add_common_arguments(name, sub)
    args = sub.parse_args(rest)
    if getattr(args, 'trust_checkpoint', False):
        os.environ[TRUST_ENV] = '1'  # reaches the Runner's own loads (resume, pretrained) in this process
    debug = args.debug or os.environ.get(DEBUG_ENV, '').strip().lower() in ('1', 'true', 'yes')
    try:
        code = _run(name, module, args, debug)
    except SystemExit as err:
        if not _joined():
            raise
        code = _exit_status(err)
    except BaseException:
        if not _joined():
            raise
        traceback.print_exc()  # a bug on a torchrun rank: its traceback, then the ranks' own way out
        code = 1
    return sys.modules['vim_wsss.dist'].finish(code) if _joined() else code  # a torchrun rank ends in finish


def _joined() -> bool:
    dist = sys.modules.get('vim_wsss.dist')  # only a command that imported it can have joined a group
    return dist is not None and dist.joined()


def _exit_status(err: SystemExit) -> int:
    """The status Python gives ``SystemExit(code)``: None -> 0, an int as it is, anything else printed -> 1."""
    if err.code is None or isinstance(err.code, int):
        return err.code or 0
    print(err.code, file=sys.stderr)
    return 1


def _run(name: str, module: Any, args: argparse.Namespace, debug: bool) -> int:
    """``module.main(args)``'s exit status; a user error is its one line on stderr and status 1."""
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(f'vim-wsss {name}: interrupted', file=sys.stderr)
        return 130
    except Exception as err:
        message = user_error_message(err)
        if message is None or debug:
            raise  # a bug (or --debug): keep the traceback
        print(f'vim-wsss {name}: error: {message}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
