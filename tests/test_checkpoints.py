"""Official checkpoint format: strict loading, error messages, pos_embed resampling around the middle class token.

The fake checkpoints are generated from the key/shape table of the official Vim state dict
(docs: implicit-attention.md section 6.2), not from our model, and wrapped like vim/main.py saves them.
"""
import argparse
import math

import pytest
import timm
import torch

from vim_wsss.models import CheckpointError, create_model
from vim_wsss.models.vim import checkpoint_filter_fn, load_pretrained, resample_pos_embed_mid_cls


def official_vim_state_dict(dim, depth=24, num_patches=196, num_classes=1000, patch=16, d_state=16, d_conv=4,
                            seed=0):
    """Random tensors under the official Vim key names and shapes (E = 2D, R = ceil(D / 16))."""
    g = torch.Generator().manual_seed(seed)
    E, R, N = 2 * dim, math.ceil(dim / 16), d_state
    shapes = {'patch_embed.proj.weight': (dim, 3, patch, patch), 'patch_embed.proj.bias': (dim,),
              'cls_token': (1, 1, dim), 'pos_embed': (1, num_patches + 1, dim), 'norm_f.weight': (dim,),
              'head.weight': (num_classes, dim), 'head.bias': (num_classes,)}
    for i in range(depth):
        for suffix in ('', '_b'):
            shapes.update({f'layers.{i}.mixer.conv1d{suffix}.weight': (E, 1, d_conv),
                           f'layers.{i}.mixer.conv1d{suffix}.bias': (E,),
                           f'layers.{i}.mixer.x_proj{suffix}.weight': (R + 2 * N, E),
                           f'layers.{i}.mixer.dt_proj{suffix}.weight': (E, R),
                           f'layers.{i}.mixer.dt_proj{suffix}.bias': (E,)})
        shapes.update({f'layers.{i}.mixer.in_proj.weight': (2 * E, dim), f'layers.{i}.mixer.A_log': (E, N),
                       f'layers.{i}.mixer.A_b_log': (E, N), f'layers.{i}.mixer.D': (E,), f'layers.{i}.mixer.D_b': (E,),
                       f'layers.{i}.mixer.out_proj.weight': (dim, E), f'layers.{i}.norm.weight': (dim,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def save_official(path, state_dict, **args):
    """Save like hustvl/Vim main.py: model, optimizer, lr_scheduler, epoch, model_ema, scaler, args (Namespace)."""
    namespace = argparse.Namespace(model='vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_'
                                         'midclstok_div2', drop_path=0.05, **args)
    torch.save({'model': state_dict, 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {},
                'epoch': 299, 'model_ema': {}, 'scaler': {}, 'args': namespace}, path)
    return path


def test_official_vim_s_loads_strictly(tmp_path):
    state_dict = official_vim_state_dict(384)
    assert sum(v.numel() for v in state_dict.values()) == 25_796_584
    path = save_official(tmp_path / 'vim_s_midclstok_80p5acc.pth', state_dict)
    model = create_model('vim_small_patch16_224', pretrained=str(path))
    loaded = model.state_dict()
    assert set(loaded) == set(state_dict)
    for key in ('layers.23.mixer.A_b_log', 'layers.0.mixer.conv1d_b.weight', 'pos_embed', 'head.bias', 'norm_f.weight'):
        torch.testing.assert_close(loaded[key], state_dict[key])


def tiny_official(tmp_path, name='vim_test.pth', **overrides):
    state_dict = official_vim_state_dict(32, depth=2, num_patches=64, patch=8, **overrides)
    return state_dict, save_official(tmp_path / name, state_dict)


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    state_dict = official_vim_state_dict(32, depth=2, num_patches=64, patch=8)
    state_dict['layers.0.mixer.A_blog'] = state_dict.pop('layers.0.mixer.A_b_log')
    state_dict['layers.1.mixer.x_proj.weight'] = torch.zeros(40, 64)
    path = save_official(tmp_path / 'broken.pth', state_dict)
    model = create_model('vim_test_patch8_64')
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, path)
    message = str(info.value)
    assert 'broken.pth' in message
    assert 'missing (1): layers.0.mixer.A_b_log' in message
    assert 'unexpected (1): layers.0.mixer.A_blog' in message
    assert 'layers.1.mixer.x_proj.weight: checkpoint (40, 64) vs model (34, 64)' in message
    with pytest.raises(FileNotFoundError, match='checkpoints/README.md'):
        load_pretrained(model, tmp_path / 'absent.pth')


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
    save_official(tmp_path / 'vim_t_midclstok_76p1acc.pth', state_dict)
    monkeypatch.setenv('VIM_WSSS_CHECKPOINTS', str(tmp_path))
    model = create_model('vim_tiny_patch16_224', pretrained=True)
    torch.testing.assert_close(model.layers[7].mixer.dt_proj_b.bias, state_dict['layers.7.mixer.dt_proj_b.bias'])
    with pytest.raises(FileNotFoundError, match='vim_s_midclstok_80p5acc.pth'):
        create_model('vim_small_patch16_224', pretrained=True)


def test_undivided_checkpoints_are_rejected(tmp_path):
    for spelling in ('if_devide_out', 'if_divide_out'):
        state_dict = official_vim_state_dict(32, depth=2, num_patches=64, patch=8)
        path = save_official(tmp_path / f'{spelling}.pth', state_dict, **{spelling: False})
        with pytest.raises(CheckpointError, match=spelling):
            load_pretrained(create_model('vim_test_patch8_64'), path)
        path = save_official(tmp_path / f'{spelling}_ok.pth', state_dict, **{spelling: True})
        load_pretrained(create_model('vim_test_patch8_64'), path)


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
    filtered = checkpoint_filter_fn({'model': state_dict}, model)
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
