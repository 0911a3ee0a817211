"""mmseg plugin: backbones, weight loading from stage-1 checkpoints, a few training iterations, test, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmseg')


def _options(root, iters=2):
    from vim_wsss.seg.train import data_options

    opts = data_options(root, val_mask_dir='SegmentationClassAug')
    opts.update({
        'model.backbone.model_name': None, 'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters, 'param_scheduler.1.end': iters, 'param_scheduler.1.begin': 1,
        'param_scheduler.0.end': 1,
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False, 'val_dataloader.batch_size': 4,
        'model.data_preprocessor.size': (64, 64), 'model.backbone.img_size': (64, 64),
        'train_dataloader.dataset.pipeline.2.scale': (64, 64),
        'train_dataloader.dataset.pipeline.3.crop_size': (64, 64),
    })
    return opts


CASES = [('vim', 'vim_test_patch8_64', (0, 1, 1, 1)), ('deit', 'deit_test_patch8_64', (0, 1, 1, 1))]


@pytest.mark.parametrize('family,name,indices', CASES)
def test_backbone_features(family, name, indices):
    import vim_wsss.seg as seg

    cls = seg.VimBackbone if family == 'vim' else seg.DeitBackbone
    bb = cls(model_name=name, img_size=64, out_indices=indices, scales=(4, 2, 1, 0.5))
    feats = bb(torch.randn(2, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4] and all(f.shape[1] == 32 for f in feats)
    with pytest.raises(ValueError, match='vim_'):
        seg.VimBackbone(model_name='deit_test_patch8_64', img_size=64)


def test_stage1_checkpoint_loads_and_wrong_backbone_is_rejected(tmp_path):
    from vim_wsss.models import create_model
    from vim_wsss.seg import TokenBackbone

    src = create_model('vim_test_patch8_64', num_classes=20)
    state = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    torch.save({'state_dict': state, 'meta': {'iter': np.int64(3)}}, tmp_path / 'cls.pth')
    bb = TokenBackbone('vim_test_patch8_64', img_size=64, out_indices=(-1,), pretrained=str(tmp_path / 'cls.pth'))
    torch.testing.assert_close(bb.model.pos_embed, src.pos_embed)
    torch.testing.assert_close(bb.model.layers[1].mixer.A_b_log, src.layers[1].mixer.A_b_log)
    with pytest.raises(ValueError, match='missing'):
        TokenBackbone('deit_test_patch8_64', img_size=64, pretrained=str(tmp_path / 'cls.pth'))


@pytest.mark.parametrize('family,name', [('vim', 'vim_test_patch8_64'), ('deit', 'deit_test_patch8_64')])
def test_train_test_resume_on_synthetic(family, name, synthetic_root, tmp_path):
    from vim_wsss.seg.train import test_seg, train_seg

    cfg = f'configs/seg/segformer_{family}-mini_1xb8-320_synthetic-64-gt.py'
    opts = _options(synthetic_root)
    opts['model.backbone.model_name'] = name
    opts['model.backbone.out_indices'] = (0, 1, 1, 1)
    opts['model.decode_head.in_channels'] = [32, 32, 32, 32]
    ckpt = train_seg(cfg, tmp_path / 'wd', opts)
    assert ckpt.is_file()
    metrics = test_seg(cfg, ckpt, tmp_path / 'wd', opts, out_dir=tmp_path / 'pred')
    assert 0 <= metrics['mIoU'] <= 100 and 'IoU.background' in metrics
    pred = np.asarray(Image.open(next((tmp_path / 'pred').glob('*.png'))))
    assert pred.shape == (64, 64) and pred.max() <= 20
    opts.update({'train_cfg.max_iters': 4, 'param_scheduler.1.end': 4})
    resumed = train_seg(cfg, tmp_path / 'wd', opts, resume=True)
    assert resumed.name == 'iter_4.pth'
