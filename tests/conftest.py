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
