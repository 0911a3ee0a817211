"""mmengine's local checkpoint IO: loads through :func:`vim_wsss.models.checkpoint.read_checkpoint`, atomic saves.

mmengine 0.10.7 calls ``torch.load(filename)`` without ``weights_only``; under torch 2.14 (``weights_only=True`` by
default) ``Runner(resume=True)``, ``load_from`` and ``load_checkpoint`` then fail on mmengine's own checkpoints.
:func:`patch_mmengine_io` (a context manager) re-registers mmengine's local-file loader to use the project's safe
reader for the duration of a ``with`` block: the allow-listed types of mmengine checkpoints load, anything else is
refused unless the user opted in (``--trust-checkpoint`` / ``VIM_WSSS_TRUST_CHECKPOINT=1``). ``torch.load`` itself
and the environment are untouched.

In the same block mmengine's local file writes (``LocalBackend.put`` / ``put_text``: checkpoints, ``best_*.pth``,
the ``last_checkpoint`` marker) go to a temporary file that is renamed into place, so a full disk or a kill mid-save
never leaves a truncated checkpoint for the next stage to pick up.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Optional

_MARK = '__vim_wsss_loader__'


def _safe_local_loader() -> Callable[[str, Any], Any]:
    def load_from_local(filename: str, map_location: Any) -> Any:
        from vim_wsss.models.checkpoint import read_checkpoint

        return read_checkpoint(os.path.expanduser(filename), map_location=map_location)

    setattr(load_from_local, _MARK, True)
    return load_from_local


def _set_local_loader(loader: Optional[Callable[..., Any]]) -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    if loader is None:
        CheckpointLoader._schemes.pop('', None)
    else:
        CheckpointLoader.register_scheme(prefixes='', loader=loader, force=True)


def _atomic_put(self: Any, obj: bytes, filepath: Any) -> None:
    from vim_wsss.utils import atomic_save_bytes

    atomic_save_bytes(filepath, obj)


def _atomic_put_text(self: Any, obj: str, filepath: Any, encoding: str = 'utf-8') -> None:
    _atomic_put(self, obj.encode(encoding), filepath)


@contextlib.contextmanager
def patch_mmengine_io() -> Iterator[None]:
    """Inside the block, mmengine loads local checkpoints with the safe reader and writes local files atomically.

    Covers ``mmengine.runner.load_checkpoint``, ``_load_checkpoint``, ``Runner.resume`` / ``load_from`` and the
    CheckpointHook's saves of local files. Only mmengine's local-file scheme and ``LocalBackend.put`` / ``put_text``
    are swapped, and they are restored on exit. Re-entrant.
    """
    from mmengine.fileio.backends.local_backend import LocalBackend
    from mmengine.runner.checkpoint import CheckpointLoader

    previous = CheckpointLoader._schemes.get('')
    if getattr(previous, _MARK, False):
        yield
        return
    put, put_text = LocalBackend.put, LocalBackend.put_text
    _set_local_loader(_safe_local_loader())
    LocalBackend.put, LocalBackend.put_text = _atomic_put, _atomic_put_text
    try:
        yield
    finally:
        _set_local_loader(previous)
        LocalBackend.put, LocalBackend.put_text = put, put_text
