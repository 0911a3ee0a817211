"""The compiled gradient-weighted implicit attention of ViM 'transformer_attr' (vim_wsss/explain/gradcam_numba.py)
against the torch path (full matrices), against the layer output itself, and through ``relevance_maps``."""
from __future__ import annotations

import pytest
import torch

from test_implicit_attention import inner_x, random_mixer
from vim_wsss.explain import patch_affinity, relevance_maps
from vim_wsss.explain.implicit_attention import attention_channel_mean, resolve_attention_impl
from vim_wsss.explain.attribution import _gradient_weighted_attention
from vim_wsss.models import create_model
from vim_wsss.ops import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason='numba is not installed')

# (d_model, d_state, d_conv, L): L on and off the kernel's 16-lane grid, L = 1, d_state not a power of two
SHAPES = [(8, 4, 4, 11), (16, 8, 2, 33), (24, 16, 4, 48), (8, 5, 3, 1), (12, 16, 4, 70)]


def internals_of(mixer, hidden):
    with torch.no_grad():
        _, internals = mixer(hidden, return_internals=True)
    return internals


def mixer_output_before_out_proj(mixer, hidden):
    seen = []
    handle = mixer.out_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        mixer(hidden)
    handle.remove()
    return seen[0]  # (B, L, E)


@pytest.mark.parametrize('d_model,d_state,d_conv,length', SHAPES)
def test_kernel_matches_full_matrices(d_model, d_state, d_conv, length):
    mixer = random_mixer(d_model, d_state, d_conv, seed=d_model + length)
    hidden = torch.randn(2, length, d_model)
    internals = internals_of(mixer, hidden)
    grads = torch.randn(2, 3, length, mixer.d_inner)
    got = _gradient_weighted_attention(internals, grads, None, 'numba')
    want = _gradient_weighted_attention(internals, grads, None, 'torch')
    assert got.shape == want.shape == (2, 3, length, length)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_kernel_fast_decay_flushes_without_error():
    """Large steps and A down to -16 over a long sequence: states underflow and are flushed; still the torch path."""
    mixer = random_mixer(16, 16, 4, seed=5)
    with torch.no_grad():
        for proj in (mixer.dt_proj, mixer.dt_proj_b):
            proj.bias.fill_(2.0)
        for name in ('A_log', 'A_b_log'):
            getattr(mixer, name).copy_(torch.log(torch.arange(1, 17.0)).expand(mixer.d_inner, -1) + 0.5)
    hidden = torch.randn(1, 150, 16)
    internals = internals_of(mixer, hidden)
    assert internals['f'].delta.mean() > 1.0
    grads = torch.randn(1, 2, 150, mixer.d_inner)
    got = _gradient_weighted_attention(internals, grads, None, 'numba')
    want = _gradient_weighted_attention(internals, grads, None, 'torch')
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize('d_model,d_state,d_conv,length', SHAPES[:3])
def test_kernel_reproduces_layer_output(d_model, d_state, d_conv, length):
    """relu(a) - relu(-a) = a: with one channel per class, E * sum_j (cam(g) - cam(-g))[k, i, j] = g_k[i] (H x)[i],
    and with zero conv bias and D, H x is the mixer output before out_proj."""
    mixer = random_mixer(d_model, d_state, d_conv, seed=3 * d_model, zero_affine=True)
    hidden = torch.randn(2, length, d_model)
    internals = internals_of(mixer, hidden)
    y = mixer_output_before_out_proj(mixer, hidden)  # (B, L, E)
    chans = mixer.d_inner
    picked = torch.tensor([0, chans // 2, chans - 1])
    signs = torch.randn(2, len(picked), length)
    grads = torch.zeros(2, len(picked), length, chans)
    for k, c in enumerate(picked):
        grads[:, k, :, c] = signs[:, k]
    diff = (_gradient_weighted_attention(internals, grads, None, 'numba')
            - _gradient_weighted_attention(internals, -grads, None, 'numba'))
    rebuilt = diff.sum(-1) * chans  # (B, K, L)
    want = signs * y[:, :, picked].transpose(1, 2)
    torch.testing.assert_close(rebuilt, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert torch.allclose(inner_x(mixer, hidden), internals['f'].x)


def test_relevance_maps_numba_equals_torch(monkeypatch):
    """'auto' on CPU runs the kernel (spied) and gives the torch path's maps."""
    from vim_wsss.explain import gradcam_numba

    calls = []
    kernel = gradcam_numba.gradient_weighted_attention_numba
    monkeypatch.setattr(gradcam_numba, 'gradient_weighted_attention_numba',
                        lambda *args: calls.append(1) or kernel(*args))
    torch.manual_seed(0)
    model = create_model('vim_test_patch8_64', num_classes=5).eval()
    with torch.no_grad():
        for layer in model.layers:
            for conv in (layer.mixer.conv1d, layer.mixer.conv1d_b):
                conv.bias.normal_(0, 0.5)
        model.head.weight.normal_(0, 0.5)
    images = torch.randn(2, 3, 64, 64)
    classes = torch.tensor([[1, 4], [0, 2]])
    got = relevance_maps(model, images, classes, 'transformer_attr', normalize=False)
    assert len(calls) == len(model.layers)
    want = relevance_maps(model, images, classes, 'transformer_attr', impl='torch', normalize=False)
    assert len(calls) == len(model.layers)
    assert want.amax() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_impl_choice():
    cpu = torch.device('cpu')
    assert resolve_attention_impl('auto', cpu) == 'numba'
    assert resolve_attention_impl('torch', cpu) == 'torch'
    assert resolve_attention_impl('auto', torch.device('cuda')) == 'torch'
    with pytest.raises(ValueError, match='CPU tensors'):
        resolve_attention_impl('numba', torch.device('cuda'))
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_attention_impl('fast', cpu)


@pytest.mark.parametrize('mode', ['relu', 'abs'])
@pytest.mark.parametrize('d_model,d_state,d_conv,length', SHAPES[:3])
def test_channel_mean_matches_torch(mode, d_model, d_state, d_conv, length):
    mixer = random_mixer(d_model, d_state, d_conv, seed=7 * d_model + length)
    hidden = torch.randn(2, length, d_model)
    internals = internals_of(mixer, hidden)
    got = attention_channel_mean(None, None, mode=mode, internals=internals, impl='numba')
    want = attention_channel_mean(None, None, mode=mode, internals=internals, impl='torch')
    assert got.shape == want.shape == (2, length, length) and want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    from_mixer = attention_channel_mean(mixer, hidden, mode=mode, impl='numba')  # internals computed from hidden
    torch.testing.assert_close(from_mixer, got)


def test_channel_mean_dispatch():
    mixer = random_mixer(8, 4, 4, seed=1)
    hidden = torch.randn(1, 9, 8)
    # options the kernel does not cover run the torch path under 'auto', and are refused under 'numba'
    for kwargs in (dict(mode='mean'), dict(parts=('s6',)), dict(rows=[0]), dict(direction='f')):
        attention_channel_mean(mixer, hidden, **kwargs)
        with pytest.raises(ValueError, match="impl 'torch'"):
            attention_channel_mean(mixer, hidden, impl='numba', **kwargs)
    with pytest.raises(ValueError, match='impl must be'):
        attention_channel_mean(mixer, hidden, impl='fast')


def test_patch_affinity_numba_equals_torch():
    torch.manual_seed(2)
    model = create_model('vim_test_patch8_64', num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    for mode in ('relu', 'abs'):
        got = patch_affinity(model, images, mode=mode)
        want = patch_affinity(model, images, mode=mode, impl='torch')
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
