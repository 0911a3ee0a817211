"""Small shared helpers: atomic writes, seeding."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

PathLike = Union[str, 'os.PathLike[str]']


def atomic_write(path: PathLike, write_fn: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp_path)`` writes a temp file in the same folder, then it is renamed.

    A crash mid-write leaves at most a stray ``.tmp-*`` file, never a truncated ``path``.

    Args:
        path: final file path (parent folders are created).
        write_fn: called with the temporary path; must write the whole file there. The temp name keeps the
            final suffix so format-sniffing writers (PIL, cv2, numpy) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.tmp-{path.stem}-', suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write raw bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_save_json(path: PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy scalars/arrays converted)."""
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f'not JSON serialisable: {type(o).__name__}')

    text = json.dumps(obj, indent=2, default=default)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_from_file(path: PathLike, folder: str) -> Any:
    """``mmengine.Config.fromfile(path)``, with a missing file named together with where such configs live.

    Args:
        path: config file.
        folder: the project's folder of such configs, for the message (e.g. 'configs/seg/').
    """
    from mmengine.config import Config

    if not Path(path).is_file():
        raise FileNotFoundError(f'config {path} not found; pass a config file (see {folder} for the shipped ones).')
    return Config.fromfile(str(path))
