"""Checkpoint loading under torch >= 2.6, where ``torch.load`` defaults to ``weights_only=True``.

Official Vim/DeiT files carry an ``argparse.Namespace`` (``ckpt['args']``) and numpy scalars; mmengine checkpoints
carry ``HistoryBuffer`` objects and numpy arrays in their message hub. :func:`torch_load` allow-lists exactly those
types for the restricted unpickler and only falls back to full unpickling for files the caller says it trusts.

mmengine 0.10.7 calls ``torch.load(filename)`` without ``weights_only``, so ``Runner(resume=True)`` and
``load_checkpoint`` fail on its own checkpoints under torch 2.14. :func:`patch_mmengine_load` (a context manager)
re-registers mmengine's local-file loader to use :func:`torch_load` for the duration of a ``with`` block;
:func:`mmengine_trusted_load` does the same for the rest of the process. Neither touches ``torch.load`` itself nor
sets an environment variable.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Union

import numpy as np
import torch

PathLike = Union[str, 'os.PathLike[str]']
_MARK = '__vim_wsss_loader__'


def _numpy_globals() -> List[Any]:
    """numpy objects that pickled arrays, dtypes and scalars reference (numpy 2 names plus numpy 1 aliases)."""
    from numpy._core import multiarray

    found: List[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
                        (multiarray.scalar, 'numpy.core.multiarray.scalar')]
    scalars = {t for t in np.sctypeDict.values() if issubclass(t, (np.number, np.bool_))}  # no object/void
    found += sorted(scalars, key=str)
    found += sorted({type(np.dtype(t)) for t in scalars}, key=str)
    return found


def safe_globals() -> List[Any]:
    """Everything :func:`torch_load` allows the restricted unpickler to rebuild besides tensors and containers."""
    allowed: List[Any] = [argparse.Namespace] + _numpy_globals()
    try:
        from mmengine.config import ConfigDict
        from mmengine.logging import HistoryBuffer

        allowed += [HistoryBuffer, ConfigDict]
    except ImportError:
        pass
    return allowed


def torch_load(path: PathLike, map_location: Any = 'cpu', trusted: bool = False) -> Any:
    """Load a checkpoint file with the restricted (``weights_only``) unpickler plus an allow-list.

    Args:
        path: ``.pth`` file.
        map_location: as for ``torch.load``.
        trusted: when the restricted loader refuses an object type, unpickle fully. Only for files you made or
            trust: unpickling can run arbitrary code.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is corrupt or truncated, or holds an object type that needs ``trusted=True``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} not found; check the path (official weights go in checkpoints/, '
                                f'see checkpoints/README.md).')
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r'Unsupported global: GLOBAL (\S+)', str(err))
        if refused is None:
            raise _corrupt(path, err) from err
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        raise ValueError(f'{path} holds an object of type {refused.group(1)} that the safe loader refuses. If you made '
                         f'or trust this file, load it with trusted=True.') from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        raise _corrupt(path, err) from err


def _corrupt(path: Path, err: BaseException) -> ValueError:
    text = str(err).strip()
    first = f'{type(err).__name__}: {text.splitlines()[0]}' if text else type(err).__name__
    return ValueError(f'cannot read checkpoint {path} ({first}). If the file is truncated or not a torch checkpoint, '
                      f'download or copy it again.')


def _trusted_local_loader() -> Callable[[str, Any], Any]:
    def load_from_local(filename: str, map_location: Any) -> Any:
        return torch_load(os.path.expanduser(filename), map_location=map_location, trusted=True)

    setattr(load_from_local, _MARK, True)
    return load_from_local


def _set_local_loader(loader: Optional[Callable[..., Any]]) -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    if loader is None:
        CheckpointLoader._schemes.pop('', None)
    else:
        CheckpointLoader.register_scheme(prefixes='', loader=loader, force=True)


@contextlib.contextmanager
def patch_mmengine_load() -> Iterator[None]:
    """Inside the block, mmengine loads local checkpoints with :func:`torch_load` (``trusted=True``).

    Covers ``mmengine.runner.load_checkpoint``, ``_load_checkpoint`` and ``Runner.resume`` / ``load_from`` of local
    files (checkpoints written by your own runs). Only mmengine's local-file scheme is swapped, and it is restored on
    exit; ``torch.load`` and the environment are untouched. Re-entrant.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    previous = CheckpointLoader._schemes.get('')
    if getattr(previous, _MARK, False):
        yield
        return
    _set_local_loader(_trusted_local_loader())
    try:
        yield
    finally:
        _set_local_loader(previous)


def mmengine_trusted_load() -> None:
    """Like :func:`patch_mmengine_load` but for the rest of the process (idempotent). Prefer the context manager."""
    from mmengine.runner.checkpoint import CheckpointLoader

    if not getattr(CheckpointLoader._schemes.get(''), _MARK, False):
        _set_local_loader(_trusted_local_loader())
