"""Honest resume of a stage's output folder: one writer at a time, a parameter record, no stale temporaries.

A stage that fills a folder file by file (``make-seeds``: ``<name>.npz``, ``make-pseudo``: ``<name>.png``) opens it
with :func:`open_output`:

* :class:`OutputLock` — ``<folder>/.lock`` created with ``O_CREAT | O_EXCL`` holding the writer's pid; a second
  writer is refused while that pid lives, a lock left by a dead pid is taken over;
* :func:`clean_temporaries` — removes what a killed writer left behind (``.tmp-*`` of
  :func:`vim_wsss.utils.atomic_write`, ``.<name>.<pid>.tmp*``), safe because the lock is held;
* :func:`check_record` — the parameters the folder was made with (a JSON file written atomically before the first
  output); a re-run with other parameters is refused with the differing keys, or, with ``overwrite``, the folder's
  outputs are deleted and the run restarts.

Under torchrun (:mod:`vim_wsss.dist`) :func:`open_shared_output` does all of that on rank 0, which holds the lock
for the whole group until every rank is done, while the other ranks wait at a barrier; they never take the lock
themselves, so the ranks of one group do not refuse each other and a second run (or group) is still refused.
"""
from __future__ import annotations

import errno
import json
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from vim_wsss.data.voc import DataError

__all__ = ['OutputLock', 'clean_temporaries', 'check_record', 'open_output', 'open_shared_output', 'pid_alive',
           'LOCK_FILE']

PathLike = Union[str, os.PathLike]
LOCK_FILE = '.lock'
_UNREADABLE_GRACE_S = 30.0  # a lock whose pid is not written yet is another writer starting, unless it is older


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """Exclusive writer lock on a folder (``<folder>/.lock`` holding the pid); a context manager.

    Args:
        folder: the output folder (created).
        what: the command named in the refusal, e.g. ``'make-pseudo'``.

    Raises:
        DataError: another live process holds the lock (the message names its pid and the lock file).
    """

    def __init__(self, folder: PathLike, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.held = False

    def acquire(self) -> 'OutputLock':
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, 'w') as stream:
                stream.write(f'{os.getpid()}\n')
            self.held = True
            return self
        raise DataError(f'could not take the lock {self.path}; delete it if no other {self.what} is running.')

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text().strip()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        pid = int(text) if text.isdigit() else None
        if pid is None and age < _UNREADABLE_GRACE_S:
            raise DataError(f'{self.path} is being taken by another {self.what}; wait for it, or delete the lock if '
                            'no other run is active.')
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            raise DataError(f'another {self.what} (pid {pid}) is writing to {self.folder}; wait for it to finish, '
                            f'or, if that process is not a {self.what}, delete {self.path}.')
        try:  # stale: its writer died (SIGKILL, power loss)
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                if self.path.read_text().strip() == str(os.getpid()):
                    self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> 'OutputLock':
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _is_temporary(name: str) -> bool:
    return name.startswith('.tmp-') or (name.startswith('.') and '.tmp' in name)


def clean_temporaries(folder: PathLike) -> List[str]:
    """Delete leftover temporary files of atomic writes in ``folder`` (call with the lock held); their names."""
    removed = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if path.is_file() and _is_temporary(path.name):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise
    return removed


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in keys)


def check_record(folder: Path, record_file: str, params: Dict[str, Any], outputs: Callable[[], List[Path]],
                 what: str, overwrite: bool = False) -> None:
    """Make ``folder`` hold outputs of ``params`` only; write the record (atomically) if it is new.

    Args:
        folder: the output folder (lock held).
        record_file: name of the JSON record in ``folder`` (``params`` itself).
        params: JSON-able parameters of this run.
        outputs: lists the folder's output files (deleted on ``overwrite``).
        what: the command, for messages.
        overwrite: delete the outputs and the record instead of refusing.

    Raises:
        DataError: the folder was made with other parameters, or holds outputs without a record.
    """
    from vim_wsss.utils import atomic_save_json

    path = folder / record_file
    params = json.loads(json.dumps(params))  # compare as stored (tuples -> lists)
    old = _read_params(path)
    found = outputs()
    if old == params:
        return
    if overwrite:
        for file in found:
            file.unlink()
        if path.exists():
            path.unlink()
    elif old is not None:
        raise DataError(f'{folder} holds {len(found)} outputs of {what} made with other parameters '
                        f'({_differences(old, params)}); use another --out, or pass --overwrite to delete them and '
                        'start again.')
    elif found:
        raise DataError(f'{folder} holds {len(found)} outputs but no {record_file}, so how they were made is unknown; '
                        'use another --out, or pass --overwrite to delete them and start again.')
    atomic_save_json(path, params)


def _read_params(path: Path) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DataError(f'{path} is not valid JSON ({err}); delete it, or pass --overwrite to start again.'
                        ) from err
    return data if isinstance(data, dict) else None


@contextmanager
def open_output(folder: PathLike, what: str, record_file: str, params: Dict[str, Any],
                outputs: Callable[[], List[Path]], overwrite: bool = False) -> Iterator[Path]:
    """Lock ``folder``, clean temporaries and check the parameter record (see the module docstring)."""
    folder = Path(folder)
    with OutputLock(folder, what):
        clean_temporaries(folder)
        check_record(folder, record_file, params, outputs, what, overwrite)
        yield folder


@contextmanager
def open_shared_output(group: Any, folder: PathLike, what: str, record_file: str, params: Dict[str, Any],
                       outputs: Callable[[], List[Path]], overwrite: bool = False,
                       setup: Optional[Callable[[], None]] = None) -> Iterator[Path]:
    """:func:`open_output` for a :class:`vim_wsss.dist.Group`: rank 0 locks, cleans, checks the record and runs
    ``setup`` (shared files) while the other ranks wait; rank 0 keeps the lock until the block ends, so end the
    block with the closing barrier (:func:`vim_wsss.dist.gather_results`). One process: :func:`open_output`."""
    from vim_wsss.dist import main_first

    with ExitStack() as stack:
        def first() -> None:
            stack.enter_context(open_output(folder, what, record_file, params, outputs, overwrite))
            if setup is not None:
                setup()

        main_first(first, group)
        yield Path(folder)
