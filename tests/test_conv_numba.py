"""Causal depthwise conv + SiLU: the compiled CPU kernel (numba) against the pure-PyTorch reference (outputs and
the gradients of x, weight and bias), the reference against torch's conv1d, and the dispatch."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from test_scan import assert_close
from vim_wsss.ops import causal_conv1d_silu, causal_conv1d_silu_ref, resolve_conv_impl

conv_mod = importlib.import_module('vim_wsss.ops.conv1d')
needs_numba = pytest.mark.skipif(conv_mod._load_numba_conv() is None, reason='numba is not installed')


def make_inputs(batch, length, dim, taps, dtype=torch.float32, seed=0):
    """Fresh random x (a channels-last slice of a wider tensor, as the mixer's), weight and bias."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, length, 2 * dim, generator=g)
    return dict(x=wide[..., :dim].to(dtype), weight=(0.5 * torch.randn(dim, taps, generator=g)).to(dtype),
                bias=(0.3 * torch.randn(dim, generator=g)).to(dtype))


def run(impl, inputs, reverse, use_conv=True, use_u=True, seed=1):
    """(conv, u) and the gradients of a random weighting of them w.r.t. x, weight and bias."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    conv, u = causal_conv1d_silu(**leaves, reverse=reverse, impl=impl)
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    if use_conv:
        loss = loss + (conv.float() * torch.randn(conv.shape, generator=g)).sum()
    if use_u:
        loss = loss + (u.float() * torch.randn(u.shape, generator=g)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return (conv, u), dict(zip(leaves, grads))


def check(inputs, reverse, rtol=1e-5, **kw):
    outs_ref, g_ref = run('ref', inputs, reverse, **kw)
    outs, g = run('numba', inputs, reverse, **kw)
    for name, got, want in zip(('conv', 'u'), outs, outs_ref):
        assert got.dtype == want.dtype == inputs['x'].dtype
        assert_close(got, want, rtol, name)
    for k, want in g_ref.items():
        assert g[k].dtype == inputs[k].dtype
        assert_close(g[k], want, rtol, k)


# E = 5 and 70 (one partial channel block), 600 (two full blocks of 256 + a partial one); L = 1 and 2 (shorter
# than the taps), 300; K = 3 and 4
@needs_numba
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('batch,length,dim,taps', [(2, 17, 70, 4), (1, 1, 5, 4), (1, 2, 600, 4), (3, 300, 300, 3),
                                                   (2, 197, 768, 4)])
def test_numba_matches_ref(batch, length, dim, taps, reverse):
    check(make_inputs(batch, length, dim, taps, seed=length + dim), reverse)


@needs_numba
@pytest.mark.parametrize('use_conv,use_u', [(True, False), (False, True)])
def test_numba_one_output_used(use_conv, use_u):
    """Gradients when only conv or only u reaches the loss (the other output's gradient is None)."""
    check(make_inputs(2, 23, 40, 4, seed=3), True, use_conv=use_conv, use_u=use_u)


@needs_numba
@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-5), (torch.bfloat16, 2e-2)])
def test_numba_dtypes(dtype, rtol):
    """fp32 arithmetic for every dtype, as the reference; results and gradients come back in the input dtypes."""
    check(make_inputs(2, 19, 33, 4, dtype=dtype, seed=4), False, rtol=rtol)


@needs_numba
def test_numba_without_bias():
    inputs = make_inputs(2, 15, 20, 4, seed=6)
    x, weight = inputs['x'].clone().requires_grad_(), inputs['weight'].clone().requires_grad_()
    results = []
    for impl in ('ref', 'numba'):
        conv, u = causal_conv1d_silu(x, weight, None, impl=impl)
        results.append([conv, u, *torch.autograd.grad((u * torch.cos(u)).sum(), [x, weight])])
    for got, want in zip(*results[::-1]):
        assert_close(got, want, 1e-5)


@pytest.mark.parametrize('reverse', [False, True])
def test_ref_is_torch_conv1d(reverse):
    """The reference is nn.Conv1d(groups=E, padding=K-1) keeping the first L outputs (of the flipped sequence for
    reverse=True), then SiLU."""
    inputs = make_inputs(2, 21, 12, 4, seed=8)
    x, weight, bias = inputs['x'], inputs['weight'], inputs['bias']
    seq = x.flip(1) if reverse else x
    want = F.conv1d(seq.transpose(1, 2), weight[:, None], bias, padding=3, groups=12)[..., :21].transpose(1, 2)
    want = want.flip(1) if reverse else want
    conv, u = causal_conv1d_silu_ref(x, weight, bias, reverse=reverse)
    torch.testing.assert_close(conv, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, F.silu(want), rtol=1e-5, atol=1e-6)


@needs_numba
def test_auto_dispatch(monkeypatch):
    x = torch.zeros(1, 3, 4)
    assert resolve_conv_impl(x) == 'numba' and resolve_conv_impl(x, 'ref') == 'ref'
    assert resolve_conv_impl(torch.zeros(1, 3, 4, device='meta')) == 'ref'
    with pytest.raises(RuntimeError, match='CPU tensors'):
        resolve_conv_impl(torch.zeros(1, 3, 4, device='meta'), 'numba')
    with pytest.raises(ValueError, match='unknown implementation'):
        resolve_conv_impl(x, 'fast')
    calls = []
    fn = conv_mod._numba_fn
    monkeypatch.setattr(conv_mod, '_numba_fn', lambda *a: calls.append('numba') or fn(*a))
    inputs = make_inputs(1, 9, 6, 4, seed=2)
    conv, _ = causal_conv1d_silu(**inputs)
    assert calls == ['numba']
    assert_close(conv, causal_conv1d_silu_ref(**inputs)[0], 1e-5)


def test_auto_falls_back_to_ref_without_numba(monkeypatch):
    scan_mod = importlib.import_module('vim_wsss.ops.selective_scan')
    monkeypatch.setattr(conv_mod, '_numba_fn', None)
    monkeypatch.setattr(scan_mod, '_numba_fn', None)
    monkeypatch.setattr(scan_mod, '_numba_error', "ModuleNotFoundError: No module named 'numba'")
    x = torch.zeros(1, 3, 4)
    assert resolve_conv_impl(x) == 'ref'
    with pytest.raises(RuntimeError, match='pip install numba'):
        resolve_conv_impl(x, 'numba')
    inputs = make_inputs(1, 9, 6, 4, seed=2)
    torch.testing.assert_close(causal_conv1d_silu(**inputs)[1], causal_conv1d_silu_ref(**inputs)[1])
