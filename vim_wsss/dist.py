"""Rank, world, shards and barriers for the per-image stages (make-seeds, make-pseudo) under torchrun.

``torchrun --nproc-per-node N --no-python vim-wsss make-seeds ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set. :func:`current_group` reads them (no variables: one process, exactly as without
torchrun) and, for N > 1, joins the group over gloo: the ranks only exchange small Python objects (errors, counts),
so gloo serves GPU ranks too, and a slow rank waiting at a barrier is not cut off by NCCL's watchdog.

Each rank takes :func:`shard` of the image list (``sorted(names)[rank::world]``: disjoint, deterministic,
balanced to one image) and runs on GPU ``LOCAL_RANK`` (:func:`rank_device`). :func:`main_first` runs the shared
set-up on rank 0 (lock, parameter record) while the others wait, and re-raises its error on every rank;
:func:`gather_results` is the closing barrier that brings every rank's counts (or error) to all. A rank that
joined the group ends through :func:`finish` (the console entry point calls it).
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Optional, Sequence, TypeVar, Union

from vim_wsss.data.voc import DataError

__all__ = ['Group', 'current_group', 'shard', 'rank_device', 'main_first', 'gather_results', 'share_line',
           'shares_text', 'joined', 'finish']

T = TypeVar('T')
ENV_VARS = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')
BARRIER_TIMEOUT = timedelta(days=2)  # a rank may wait at the closing barrier for the slowest shard
_JOINED = []  # [True] once current_group has joined the torch.distributed group in this process


@dataclass(frozen=True)
class Group:
    """This process's place in a torchrun group (``world == 1``: a single process).

    ``group_id`` is torchrun's ``TORCHELASTIC_RUN_ID`` (or the rendezvous endpoint), '' for a single process.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group_id: str = ''

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1


def _env_int(name: str) -> Optional[int]:
    text = os.environ.get(name)
    if text is None or text == '':
        return None
    if not text.strip().isdigit():
        raise DataError(f'environment variable {name}={text!r} must be a whole number >= 0; launch with '
                        '`torchrun --nproc-per-node N --no-python vim-wsss ...`, or unset WORLD_SIZE, RANK and '
                        'LOCAL_RANK for one process.')
    return int(text)


def group_from_env() -> Group:
    """The group the torchrun variables describe, without joining it (DataError for inconsistent values)."""
    world, rank, local = (_env_int(n) for n in ENV_VARS)
    if world is None and rank is None:
        return Group()
    if world is None or rank is None or world < 1 or rank >= world:
        raise DataError(f'WORLD_SIZE={os.environ.get("WORLD_SIZE")!r} and RANK={os.environ.get("RANK")!r} do not '
                        'describe a process group (need both, 0 <= RANK < WORLD_SIZE); launch with torchrun, or '
                        'unset WORLD_SIZE, RANK and LOCAL_RANK for one process.')
    run_id = os.environ.get('TORCHELASTIC_RUN_ID') or \
        f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    return Group(rank=rank, world=world, local_rank=local if local is not None else rank,
                 group_id=run_id if world > 1 else '')


def current_group() -> Group:
    """This process's :class:`Group`; joins the torch.distributed group (gloo) once when ``world > 1``.

    An already initialised default group (e.g. a caller's own) is used as it is.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        env = group_from_env()
        return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=env.local_rank,
                     group_id=env.group_id or 'torch.distributed')
    group = group_from_env()
    if group.sharded:
        dist.init_process_group('gloo', rank=group.rank, world_size=group.world, timeout=BARRIER_TIMEOUT)
        atexit.register(_leave)
        _JOINED[:] = [True]
    return group


def _leave() -> None:
    """Destroy the group at exit (exit handlers run while the interpreter is whole)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def joined() -> bool:
    """Whether :func:`current_group` joined a torch.distributed group in this process."""
    return bool(_JOINED)


def finish(code: int) -> int:
    """End this process with exit status ``code`` after a run that joined a group; one process: return ``code``.

    A rank runs the exit handlers (they leave the group and flush the loggers), flushes stdout and stderr, and ends
    with ``os._exit(code)``, skipping the interpreter's finalisation. There, a gloo worker thread that still holds
    the last collective's tensors takes the GIL to release them, the finalising interpreter ends that thread with
    ``pthread_exit``, and its unwinding through a C++ destructor calls ``std::terminate``: "terminate called
    without an active exception", SIGABRT, after every output was written (seen in about 2 of 95 runs of 3 ranks on
    2 cores). Everything a stage writes is already closed and renamed into place when it returns.
    """
    if not joined():
        return code
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)


def shard(items: Sequence[T], group: Group, key: Optional[Callable[[T], Any]] = None) -> List[T]:
    """This rank's share: ``sorted(items, key=key)[rank::world]`` (all of ``items``, in their order, for one
    process)."""
    if not group.sharded:
        return list(items)
    return sorted(items, key=key)[group.rank::group.world]


def share_line(group: Group, mine: int, total: int) -> str:
    """'rank 1/3: 4 of 11 images' ('' for one process)."""
    return f'rank {group.rank}/{group.world}: {mine} of {total} images' if group.sharded else ''


def shares_text(shares: Optional[Sequence[int]]) -> str:
    """' over 3 ranks (4/4/3 images)' from each rank's number of images; '' for one process (None)."""
    return f" over {len(shares)} ranks ({'/'.join(map(str, shares))} images)" if shares else ''


def rank_device(device: Union[str, 'object'], group: Group) -> Any:
    """``'cuda'`` -> ``'cuda:<LOCAL_RANK>'`` in a group (and made current); any other device as given."""
    if group.sharded and str(device) == 'cuda':
        import torch

        torch.cuda.set_device(group.local_rank)
        return f'cuda:{group.local_rank}'
    return device


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _raise(error: Optional[tuple]) -> None:
    if error is None:
        return
    kind, message, rank = error
    cls = {'DataError': DataError, 'FileNotFoundError': FileNotFoundError}.get(kind, RuntimeError)
    raise cls(message if cls is not RuntimeError else f'rank {rank} failed: {kind}: {message}')


def _as_error(err: BaseException, group: Group) -> tuple:
    return type(err).__name__, str(err), group.rank


def main_first(fn: Callable[[], T], group: Group) -> Optional[T]:
    """Run ``fn`` on rank 0 while the other ranks wait (a barrier); its error is raised on every rank.

    Returns ``fn()`` on rank 0, None elsewhere (one process: just ``fn()``).
    """
    if not group.sharded:
        return fn()
    result, error = None, None
    if group.main:
        try:
            result = fn()
        except Exception as err:  # every rank must leave the barrier with the same outcome
            error = _as_error(err, group)
            _broadcast(error)
            raise
    _raise(_broadcast(error))
    return result


def gather_results(fn: Callable[[], T], group: Group) -> List[T]:
    """Run ``fn`` on every rank, then wait for all (the closing barrier): every rank's result, by rank.

    An error on any rank is raised on all of them (the first failing rank's, named), so none waits forever.
    """
    if not group.sharded:
        return [fn()]
    import torch.distributed as dist

    own_error = None
    try:
        mine = ('ok', fn())
    except Exception as err:
        own_error, mine = err, ('error', _as_error(err, group))
    everyone: List[Any] = [None] * group.world
    dist.all_gather_object(everyone, mine)
    if own_error is not None:
        raise own_error
    for status, value in everyone:
        if status == 'error':
            _raise(value)
    return [value for _, value in everyone]
