"""mmengine's local checkpoint loading routed through :func:`vim_wsss.models.checkpoint.read_checkpoint`.

mmengine 0.10.7 calls ``torch.load(filename)`` without ``weights_only``; under torch 2.14 (``weights_only=True`` by
default) ``Runner(resume=True)``, ``load_from`` and ``load_checkpoint`` then fail on mmengine's own checkpoints.
:func:`patch_mmengine_load` (a context manager) re-registers mmengine's local-file loader to use the project's safe
reader for the duration of a ``with`` block: the allow-listed types of mmengine checkpoints load, anything else is
refused unless the user opted in (``--trust-checkpoint`` / ``VIM_WSSS_TRUST_CHECKPOINT=1``). ``torch.load`` itself
and the environment are untouched.
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


@contextlib.contextmanager
def patch_mmengine_load() -> Iterator[None]:
    """Inside the block, mmengine loads local checkpoints with the safe reader.

    Covers ``mmengine.runner.load_checkpoint``, ``_load_checkpoint`` and ``Runner.resume`` / ``load_from`` of local
    files. Only mmengine's local-file scheme is swapped, and it is restored on exit. Re-entrant.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    previous = CheckpointLoader._schemes.get('')
    if getattr(previous, _MARK, False):
        yield
        return
    _set_local_loader(_safe_local_loader())
    try:
        yield
    finally:
        _set_local_loader(previous)
