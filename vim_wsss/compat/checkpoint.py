"""Checkpoint loading under torch >= 2.6, where ``torch.load`` defaults to ``weights_only=True``.

Official Vim/DeiT files carry an ``argparse.Namespace`` (``ckpt['args']``) and numpy scalars; mmengine checkpoints
carry ``HistoryBuffer`` objects and numpy arrays in their message hub. :func:`torch_load` allow-lists exactly those
types for the restricted unpickler and only falls back to full unpickling for files the caller says it trusts.
:func:`mmengine_trusted_load` makes mmengine's own loader (Runner ``resume`` / ``load_from``) do the same, by
re-registering mmengine's local-file scheme; nothing global in torch is touched and no environment variable is set.
"""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any, List, Union

import numpy as np
import torch

PathLike = Union[str, 'os.PathLike[str]']


def _safe_types() -> List[Any]:
    types: List[Any] = [argparse.Namespace, np.ndarray, np.dtype, np.core.multiarray._reconstruct
                        if hasattr(np, 'core') else np.ndarray]
    types += [type(np.dtype(t)) for t in ('float16', 'float32', 'float64', 'int32', 'int64', 'uint8', 'bool')]
    types += [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        types += [_reconstruct, scalar]
    except ImportError:
        pass
    try:
        from mmengine.logging import HistoryBuffer
        from mmengine.config import ConfigDict
        types += [HistoryBuffer, ConfigDict]
    except ImportError:
        pass
    return types


def torch_load(path: PathLike, map_location: Any = 'cpu', trusted: bool = False) -> Any:
    """Load a checkpoint file.

    Args:
        path: ``.pth`` file.
        map_location: as for ``torch.load``.
        trusted: allow full unpickling when the restricted loader refuses an object (only for files you made or
            trust: unpickling can run code).

    Raises:
        FileNotFoundError: the file is missing. ValueError: the file is corrupt or needs ``trusted=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} not found; see checkpoints/README.md for where weights go.')
    try:
        with torch.serialization.safe_globals(_safe_types()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        detail = next((ln.strip() for ln in str(err).splitlines() if 'Unsupported global' in ln), 'unsupported object')
        raise ValueError(f'{path} holds objects the safe loader refuses ({detail}). If you trust the file, load it '
                         f'with trusted=True.') from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f'cannot read checkpoint {path} ({err}); the file is truncated or not a torch checkpoint: '
                         f'download or copy it again.') from err


def mmengine_trusted_load() -> None:
    """Make mmengine's local-file checkpoint loader use :func:`torch_load` (trusted: files of our own runs).

    Idempotent. Affects only mmengine's ``CheckpointLoader`` scheme for local paths.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    current = CheckpointLoader._schemes.get('')
    if getattr(current, '__vim_wsss__', False):
        return

    def load_from_local(filename: str, map_location: Any) -> Any:
        filename = os.path.expanduser(filename)
        return torch_load(filename, map_location=map_location, trusted=True)

    load_from_local.__vim_wsss__ = True
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
