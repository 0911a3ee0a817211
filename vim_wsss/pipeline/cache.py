"""Content-addressed stage cache for the end-to-end pipeline.

A stage is identified by its name, its parameters (JSON-able) and the keys of the stages it consumes. Its
outputs live in ``<root>/<name>-<key[:12]>/`` and a ``stage.json`` marker is written atomically only after the
stage function returns, so an interrupted stage is simply re-run (stage functions are themselves resumable where
they are long). Changing a parameter changes the key of that stage and of everything downstream of it, and
nothing upstream.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vim_wsss.utils import atomic_save_json

MARKER = 'stage.json'


def stage_key(name: str, params: dict, inputs: list[str]) -> str:
    """sha256 over the stage name, its canonical JSON parameters and its input keys."""
    blob = json.dumps({'name': name, 'params': params, 'inputs': inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class StageResult:
    """What a finished stage left behind."""

    name: str
    key: str
    dir: Path
    outputs: dict[str, Any]
    seconds: float
    cached: bool = False
    params: dict = field(default_factory=dict)


class StageCache:
    """Runs stages at most once per (name, params, inputs).

    Args:
        root: folder holding one sub-folder per stage instance.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, key: str) -> Path:
        return self.root / f'{name}-{key[:12]}'

    def lookup(self, name: str, params: dict, inputs: list[StageResult]) -> StageResult | None:
        """The finished result for these arguments, or None."""
        key = stage_key(name, params, [r.key for r in inputs])
        marker = self.path(name, key) / MARKER
        if not marker.is_file():
            return None
        meta = json.loads(marker.read_text())
        return StageResult(name, key, marker.parent, meta['outputs'], meta['seconds'], cached=True, params=params)

    def run(self, name: str, params: dict, inputs: list[StageResult],
            fn: Callable[[Path], dict[str, Any]]) -> StageResult:
        """Return the cached result or run ``fn(stage_dir) -> outputs`` and record it.

        Args:
            name: stage name (also the folder prefix).
            params: JSON-able parameters that determine the stage's output.
            inputs: upstream results whose keys enter this stage's key.
            fn: does the work inside ``stage_dir``; returns JSON-able outputs (paths as str, metrics).
        """
        found = self.lookup(name, params, inputs)
        if found is not None:
            return found
        key = stage_key(name, params, [r.key for r in inputs])
        stage_dir = self.path(name, key)
        stage_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        outputs = fn(stage_dir)
        seconds = time.perf_counter() - start
        atomic_save_json(stage_dir / MARKER, {
            'name': name, 'key': key, 'params': params, 'inputs': [r.key for r in inputs],
            'outputs': outputs, 'seconds': seconds,
        })
        return StageResult(name, key, stage_dir, outputs, seconds, cached=False, params=params)
