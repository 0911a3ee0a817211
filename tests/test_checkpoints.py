"""Official checkpoint format: strict loading, error messages, pos_embed resampling around the middle class token.

The fake checkpoints are generated from the key/shape table of the official Vim state dict
(docs: implicit-attention.md section 6.2), not from our model, and wrapped like vim/main.py saves them
(tests/official_files.py).
"""
import argparse

import numpy as np
import pytest
import timm
import torch
from official_files import official_vim_state_dict, save_official_vim

from vim_wsss.models import CheckpointError, create_model, load_weights
from vim_wsss.models.checkpoint import read_checkpoint
from vim_wsss.models.vim import checkpoint_filter_fn, resample_pos_embed_mid_cls


def test_official_vim_s_loads_strictly(tmp_path):
    state_dict = official_vim_state_dict(384)
    assert sum(v.numel() for v in state_dict.values()) == 25_796_584
    path = save_official_vim(tmp_path / 'vim_s_midclstok_80p5acc.pth', state_dict)
    model = create_model('vim_small_patch16_224', pretrained=str(path))
    loaded = model.state_dict()
    assert set(loaded) == set(state_dict)
    for key in ('layers.23.mixer.A_b_log', 'layers.0.mixer.conv1d_b.weight', 'pos_embed', 'head.bias', 'norm_f.weight'):
        torch.testing.assert_close(loaded[key], state_dict[key])


def tiny_official(tmp_path, name='vim_test.pth', **overrides):
    state_dict = official_vim_state_dict(32, depth=2, num_patches=64, patch=8, **overrides)
    return state_dict, save_official_vim(tmp_path / name, state_dict)


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    state_dict = official_vim_state_dict(32, depth=2, num_patches=64, patch=8)
    state_dict['layers.0.mixer.A_blog'] = state_dict.pop('layers.0.mixer.A_b_log')
    state_dict['layers.1.mixer.x_proj.weight'] = torch.zeros(40, 64)
    path = save_official_vim(tmp_path / 'broken.pth', state_dict)
    model = create_model('vim_test_patch8_64')
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert 'broken.pth' in message
    assert 'missing (1): layers.0.mixer.A_b_log' in message
    assert 'unexpected (1): layers.0.mixer.A_blog' in message
    assert 'layers.1.mixer.x_proj.weight (40, 64) vs (34, 64)' in message and '\n' not in message
    with pytest.raises(FileNotFoundError, match='checkpoints/README.md'):
        load_weights(model, tmp_path / 'absent.pth')


def test_loaded_model_reproduces_forward(tmp_path):
    state_dict, path = tiny_official(tmp_path)
    source = create_model('vim_test_patch8_64').eval()
    source.load_state_dict(state_dict)
    for kwargs in (dict(pretrained=str(path)), dict(checkpoint_path=str(path))):
        model = create_model('vim_test_patch8_64', **kwargs).eval()
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(model(x), source(x))
    timm_model = timm.create_model('vim_test_patch8_64', pretrained=str(path)).eval()
    torch.testing.assert_close(timm_model.pos_embed, state_dict['pos_embed'])


def test_pretrained_true_reads_checkpoint_folder(tmp_path, monkeypatch):
    state_dict = official_vim_state_dict(192, depth=24)
    save_official_vim(tmp_path / 'vim_t_midclstok_76p1acc.pth', state_dict)
    monkeypatch.setenv('VIM_WSSS_CHECKPOINTS', str(tmp_path))
    model = create_model('vim_tiny_patch16_224', pretrained=True)
    torch.testing.assert_close(model.layers[7].mixer.dt_proj_b.bias, state_dict['layers.7.mixer.dt_proj_b.bias'])
    with pytest.raises(FileNotFoundError, match='vim_s_midclstok_80p5acc.pth'):
        create_model('vim_small_patch16_224', pretrained=True)


def test_undivided_checkpoints_are_rejected(tmp_path):
    for spelling in ('if_devide_out', 'if_divide_out'):
        state_dict = official_vim_state_dict(32, depth=2, num_patches=64, patch=8)
        path = save_official_vim(tmp_path / f'{spelling}.pth', state_dict, **{spelling: False})
        with pytest.raises(CheckpointError, match=spelling):
            load_weights(create_model('vim_test_patch8_64'), path)
        path = save_official_vim(tmp_path / f'{spelling}_ok.pth', state_dict, **{spelling: True})
        load_weights(create_model('vim_test_patch8_64'), path)


def test_head_reinitialised_when_num_classes_differs(tmp_path):
    state_dict, path = tiny_official(tmp_path)
    torch.manual_seed(0)
    fresh = create_model('vim_test_patch8_64', num_classes=20)
    torch.manual_seed(0)
    model = create_model('vim_test_patch8_64', num_classes=20, pretrained=str(path))
    assert model.head.weight.shape == (20, 32)
    torch.testing.assert_close(model.head.weight, fresh.head.weight)  # kept its own initialisation
    torch.testing.assert_close(model.layers[1].mixer.in_proj.weight, state_dict['layers.1.mixer.in_proj.weight'])
    headless = create_model('vim_test_patch8_64', num_classes=0, pretrained=str(path))
    assert isinstance(headless.head, torch.nn.Identity)


def test_pos_embed_resampled_around_middle_class_token():
    state_dict = official_vim_state_dict(192, depth=24)
    pos = torch.zeros(1, 197, 192)
    pos[:, 98] = 1000.0  # the class entry; every patch entry is 0
    state_dict['pos_embed'] = pos
    model = create_model('vim_tiny_patch16_224', img_size=448)
    assert (model.cls_index, model.num_patches, model.pos_embed.shape) == (392, 784, (1, 785, 192))
    filtered = checkpoint_filter_fn(state_dict, model)
    new = filtered['pos_embed']
    assert new.shape == (1, 785, 192)
    torch.testing.assert_close(new[:, 392], pos[:, 98])
    assert model.patch_tokens(new).abs().max() == 0  # the class entry did not leak into the patch grid
    model.load_state_dict(filtered)


def test_pos_embed_patch_grid_interpolation():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 197, 8, generator=g)
    same = resample_pos_embed_mid_cls(pos, (14, 14))
    assert same is pos  # identity at the same grid
    up = resample_pos_embed_mid_cls(pos, (28, 28))
    grid = torch.cat([pos[:, :98], pos[:, 99:]], 1).reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(28, 28), mode='bicubic', align_corners=False)
    patches = torch.cat([up[:, :392], up[:, 393:]], 1).reshape(1, 28, 28, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(patches, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(up[:, 392], pos[:, 98])
    back = resample_pos_embed_mid_cls(pos, (7, 9))  # non-square target
    assert back.shape == (1, 64, 8)
    torch.testing.assert_close(back[:, 31], pos[:, 98])


def test_checkpoint_at_other_size_loads_and_runs(tmp_path):
    _, path = tiny_official(tmp_path)
    model = create_model('vim_test_patch8_64', img_size=96, pretrained=str(path)).eval()
    assert model.cls_index == 72 and model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_read_checkpoint_official_style_checkpoint(tmp_path):
    path = tmp_path / 'vim_s.pth'
    state = {'w': torch.randn(3, 2)}
    torch.save({'model': state, 'args': argparse.Namespace(lr=1e-3, model='vim_small'), 'epoch': np.int64(299),
                'best': np.float64(80.5), 'hist': np.arange(4, dtype=np.float32)}, path)
    ckpt = read_checkpoint(path)
    assert ckpt['args'].model == 'vim_small' and ckpt['epoch'] == 299 and ckpt['best'] == 80.5
    torch.testing.assert_close(ckpt['model']['w'], state['w'])
    np.testing.assert_array_equal(ckpt['hist'], np.arange(4, dtype=np.float32))


class _Custom:
    def __init__(self, value):
        self.value = value


def test_read_checkpoint_refuses_unknown_objects_unless_trusted(tmp_path):
    path = tmp_path / 'custom.pth'
    torch.save({'obj': _Custom(3)}, path)
    with pytest.raises(CheckpointError, match=r'custom\.pth holds .*_Custom.*--trust-checkpoint.*VIM_WSSS_TRUST_CHECKPOINT=1'):
        read_checkpoint(path)
    assert read_checkpoint(path, trust=True)['obj'].value == 3


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_read_checkpoint_errors_name_the_file(tmp_path, damage):
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        read_checkpoint(tmp_path / 'missing.pth')
    bad = tmp_path / f'{damage}.pth'
    torch.save({'model': {'w': torch.randn(100)}}, bad)
    bad.write_bytes(bad.read_bytes()[:50] if damage == 'truncate' else b'not a checkpoint ' * 20)
    for trust in (False, True):
        with pytest.raises(CheckpointError, match=f'{damage}.pth'):
            read_checkpoint(bad, trust=trust)
