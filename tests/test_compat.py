"""mmcv-lite stand-in and torch>=2.6 checkpoint loading."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def test_mmseg_models_import_and_point_sample():
    from vim_wsss.compat import ensure_mmseg

    ensure_mmseg()
    import mmcv.ops
    import mmseg.models  # noqa: F401

    x = torch.randn(2, 3, 8, 9)
    pts = torch.rand(2, 5, 2)
    ref = F.grid_sample(x, 2 * pts[:, :, None] - 1, align_corners=False)[..., 0]
    torch.testing.assert_close(mmcv.ops.point_sample(x, pts), ref)
    from vim_wsss.compat.mmcv_ops import has_compiled_mmcv
    if not has_compiled_mmcv():
        with pytest.raises(ModuleNotFoundError, match='compiled mmcv'):
            mmcv.ops.nms  # noqa: B018


def test_torch_load_official_style_checkpoint(tmp_path):
    from vim_wsss.compat import torch_load

    path = tmp_path / 'vim.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=1e-3), 'epoch': np.int64(3)}, path)
    ckpt = torch_load(path)
    assert ckpt['args'].lr == 1e-3 and torch.equal(ckpt['model']['w'], torch.ones(2))


def test_torch_load_errors_name_the_file(tmp_path):
    from vim_wsss.compat import torch_load

    with pytest.raises(FileNotFoundError, match='missing.pth'):
        torch_load(tmp_path / 'missing.pth')
    bad = tmp_path / 'truncated.pth'
    torch.save({'model': {'w': torch.randn(100)}}, bad)
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(ValueError, match='truncated.pth'):
        torch_load(bad)


def test_mmengine_checkpoint_with_history_buffer_loads(tmp_path):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import _load_checkpoint

    from vim_wsss.compat import mmengine_trusted_load, torch_load

    buf = HistoryBuffer()
    buf.update(0.5)
    path = tmp_path / 'iter_1.pth'
    torch.save({'meta': {'hist': buf, 'seed': np.int64(0)}, 'state_dict': {'w': torch.ones(1)}}, path)
    with pytest.raises(ValueError, match='trusted=True'):
        torch_load(path)  # the restricted loader refuses it: no silent full unpickling
    mmengine_trusted_load()
    ckpt = _load_checkpoint(str(path))
    assert ckpt['meta']['hist'].current() == 0.5
