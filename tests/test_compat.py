"""mmcv-lite stand-in for mmcv.ops, and mmengine's checkpoint loading routed through the safe reader."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vim_wsss.compat import ensure_mmseg, patch_mmengine_io
from vim_wsss.compat.mmcv_ops import has_compiled_mmcv

lite_only = pytest.mark.skipif(has_compiled_mmcv(), reason='compiled mmcv installed: the stand-in is not used')


def test_ensure_mmseg_imports_models_and_keeps_mmcv_version():
    import mmcv

    version = mmcv.__version__
    mmseg = ensure_mmseg()
    import mmseg.models  # noqa: F401
    from mmseg.registry import MODELS

    assert mmcv.__version__ == version and ensure_mmseg() is mmseg
    assert MODELS.get('FCNHead') is not None


def test_point_sample_matches_grid_sample_and_pixel_centres():
    ensure_mmseg()
    from mmcv.ops import point_sample

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 9, generator=gen)
    pts = torch.rand(2, 5, 2, generator=gen)
    ref = F.grid_sample(x, 2 * pts[:, :, None] - 1, align_corners=False)[..., 0]
    torch.testing.assert_close(point_sample(x, pts), ref)
    grid = torch.rand(2, 4, 6, 2, generator=gen)  # (N, Hp, Wp, 2) keeps the map layout
    assert point_sample(x, grid).shape == (2, 3, 4, 6)
    # independent check: with align_corners=False, (j + 0.5) / W, (i + 0.5) / H is exactly pixel (i, j)
    i, j = torch.randint(0, 8, (5,), generator=gen), torch.randint(0, 9, (5,), generator=gen)
    centres = torch.stack([(j + 0.5) / 9, (i + 0.5) / 8], -1)[None].expand(2, 5, 2)
    torch.testing.assert_close(point_sample(x, centres), x[:, :, i, j])
    # the midpoint of two horizontal neighbours is their mean (bilinear)
    mid = torch.tensor([[[(3 + 1.0) / 9, (2 + 0.5) / 8]]]).expand(2, 1, 2)
    torch.testing.assert_close(point_sample(x, mid)[..., 0], (x[:, :, 2, 3] + x[:, :, 2, 4]) / 2)


@lite_only
def test_stand_in_refuses_other_ops_clearly():
    ensure_mmseg()
    import mmcv.ops

    with pytest.raises(ModuleNotFoundError, match='compiled mmcv'):
        mmcv.ops.nms  # noqa: B018
    with pytest.raises(RuntimeError, match='compiled mmcv'):
        mmcv.ops.sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))
    assert not hasattr(mmcv.ops, '__file__')  # dunders -> AttributeError (mmengine's registry relies on it)
    with pytest.raises(ModuleNotFoundError):
        from mmcv.ops import CrissCrossAttention  # noqa: F401  (mmseg guards this with except ModuleNotFoundError)


def _mmengine_checkpoint(path):
    """What mmengine's CheckpointHook writes: meta with numpy values, message hub with HistoryBuffers."""
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    hub = MessageHub.get_instance('vim_wsss_test_compat')
    hub.update_scalar('train/loss', np.float32(0.25))
    hub.update_info('seed', np.int64(7))
    model = torch.nn.Linear(3, 2)
    save_checkpoint({'meta': {'iter': 2, 'seed': np.int64(7), 'hist': np.arange(3.0)},
                     'state_dict': model.state_dict(), 'message_hub': hub.state_dict()}, str(path))
    return model


def test_patch_mmengine_io_is_scoped(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

    path = tmp_path / 'iter_2.pth'
    saved = _mmengine_checkpoint(path)
    original = CheckpointLoader._schemes['']
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        load_checkpoint(torch.nn.Linear(3, 2), str(path))  # what torch 2.14 does to mmengine 0.10.7 unpatched
    model = torch.nn.Linear(3, 2)
    with patch_mmengine_io():
        with patch_mmengine_io():  # re-entrant
            ckpt = load_checkpoint(model, str(path))
        ckpt = load_checkpoint(model, str(path))
    torch.testing.assert_close(model.weight, saved.weight)
    np.testing.assert_array_equal(ckpt['meta']['hist'], np.arange(3.0))
    assert ckpt['message_hub']['log_scalars']['train/loss'].current() == pytest.approx(0.25)
    assert CheckpointLoader._schemes[''] is original  # restored: nothing leaks out of the block
    assert torch.load is torch.serialization.load


def test_runner_resume_inside_patch(tmp_path):
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Tiny(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x, mode='tensor'):
            out = self.lin(x)
            return {'loss': out.pow(2).mean()} if mode == 'loss' else out

    class CountIters(Hook):
        def __init__(self):
            self.seen = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.seen.append(runner.iter)

    data = [dict(x=torch.full((2,), float(i))) for i in range(8)]

    def runner(max_iters, resume, counter):
        return Runner(model=Tiny(), work_dir=str(tmp_path), experiment_name=f'run{max_iters}', custom_hooks=[counter],
                      train_dataloader=dict(dataset=data, batch_size=2, collate_fn=dict(type='default_collate'),
                                            sampler=dict(type='DefaultSampler', shuffle=False)),
                      optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                      train_cfg=dict(by_epoch=False, max_iters=max_iters), resume=resume,
                      default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)))

    first, second = CountIters(), CountIters()
    runner(2, False, first).train()
    assert (tmp_path / 'iter_2.pth').is_file() and first.seen == [0, 1]
    with patch_mmengine_io():
        resumed = runner(3, True, second)
        resumed.train()
    assert second.seen == [2] and resumed.iter == 3  # picked up at iteration 2 from iter_2.pth
