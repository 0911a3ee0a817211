"""Shared fixtures: a tiny synthetic VOC-format dataset built once per test session."""
from __future__ import annotations

import os

import pytest
import torch

# keep the suite predictable on 2-core CI machines
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """Path of a tiny synthetic VOC-format dataset (40 train_aug / 15 train / 12 val images of 64 px)."""
    from vim_wsss.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp('synthetic') / 'VOC2012', seed=0, num_train=40, num_val=12,
                          size=64)


def _console_command():
    """The installed ``vim-wsss`` entry point of this interpreter's environment (what users run)."""
    import shutil
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name('vim-wsss')
    if script.is_file():
        return [str(script)]
    found = shutil.which('vim-wsss')
    if found is None:
        pytest.fail('the vim-wsss console script is not installed; run `pip install -e .` (make install)')
    return [found]


def _limit_file_size(max_bytes):
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


@pytest.fixture(scope='session')
def run_cli():
    """``run_cli(*args, env=None, cwd=None, timeout=600)`` runs ``vim-wsss *args`` as a subprocess.

    Returns the ``subprocess.CompletedProcess`` (text output captured). ``env`` entries are added to the current
    environment; VIM_WSSS_TRUST_CHECKPOINT is removed unless given, so tests see the safe default.
    """
    import subprocess

    command = _console_command()

    def run(*args, env=None, cwd=None, timeout=600, max_file_bytes=None):
        full_env = {k: v for k, v in os.environ.items() if k != 'VIM_WSSS_TRUST_CHECKPOINT'}
        full_env.update(env or {})
        limit = None if max_file_bytes is None else (lambda: _limit_file_size(max_file_bytes))
        return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=cwd, preexec_fn=limit)

    return run
