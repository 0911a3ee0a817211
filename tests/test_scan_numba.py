"""The compiled CPU scan (numba) against the sequential reference: outputs, last state and every gradient."""
import importlib

import numpy as np
import pytest
import torch

from test_scan import NAMES, assert_close, make_inputs, run
from vim_wsss.ops import numba_available, resolve_scan_impl, scan_impl, selective_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(not numba_available(), reason='numba is not installed')


def numba_scan(*args, **kwargs):
    return selective_scan(*args, impl='numba', **kwargs)


def flipped(inputs):
    return {k: (v.flip(-1) if v.dim() == 3 else v) for k, v in inputs.items()}


def check(inputs, rtol=1e-5, **kw):
    out_ref, g_ref = run(selective_scan_ref, inputs, **kw)
    out, g = run(numba_scan, inputs, **kw)
    assert out.dtype == out_ref.dtype
    assert_close(out, out_ref, rtol, 'out')
    for k in g_ref:
        assert g[k].dtype == inputs[k].dtype
        assert_close(g[k], g_ref[k], rtol, k)


# E = 6 (one partial channel block), 130 (two full blocks + a partial one), L = 1, L = 300 (many state chunks,
# not a multiple of the chunk), N = 5 and 16
@pytest.mark.parametrize('batch,dim,dstate,length', [(2, 6, 4, 23), (1, 70, 5, 1), (3, 130, 16, 33),
                                                     (1, 64, 16, 300)])
def test_numba_matches_ref(batch, dim, dstate, length):
    check(make_inputs(batch=batch, dim=dim, dstate=dstate, length=length, seed=length + dim))


@pytest.mark.parametrize('use,softplus', [(('u', 'delta', 'A', 'B', 'C'), False),
                                          (('u', 'delta', 'A', 'B', 'C', 'D'), True),
                                          (('u', 'delta', 'A', 'B', 'C', 'z', 'delta_bias'), False)])
def test_numba_optional_args(use, softplus):
    inputs = make_inputs(length=19, seed=3)
    if not softplus:  # keep the step sizes (delta + bias) positive without softplus
        inputs['delta'] = inputs['delta'].abs() * 0.3
        inputs['delta_bias'] = inputs['delta_bias'].abs()
    check(inputs, use=use, softplus=softplus)


def test_numba_last_state_and_gradient():
    inputs = make_inputs(length=37, dim=9, seed=5)
    check(inputs, last_state=True)
    _, state_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    _, state = numba_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert state.shape == (2, 9, 4)
    assert_close(state, state_ref, 1e-5, 'last_state')


@pytest.mark.parametrize('impl', ['numba', 'fast', 'ref'])
@pytest.mark.parametrize('last_state', [False, True])
def test_reverse_is_flipped_scan(impl, last_state):
    """reverse=True equals flipping every sequence input and the output, for the native and the fallback paths."""
    inputs = make_inputs(length=29, dim=7, seed=9)
    out_ref, g_ref = run(selective_scan_ref, flipped(inputs), last_state=last_state)
    out, g = run(lambda *a, **k: selective_scan(*a, impl=impl, reverse=True, **k), inputs, last_state=last_state)
    assert_close(out, out_ref.flip(-1), 1e-5, 'out')
    for k in NAMES:
        assert_close(g[k], g_ref[k].flip(-1) if g_ref[k].dim() == 3 else g_ref[k], 1e-5, k)


def test_numba_full_and_partial_blocks_reverse_without_gate():
    """E = 200 (three full 64-channel blocks, run by the fixed-width code, and a partial one), L = 150, reverse
    scan without z (the gate gradient is a placeholder inside): every gradient against the flipped reference."""
    inputs = make_inputs(batch=2, dim=200, dstate=16, length=150, seed=11)
    use = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')
    out_ref, g_ref = run(selective_scan_ref, flipped(inputs), use=use)
    out, g = run(lambda *a, **k: selective_scan(*a, impl='numba', reverse=True, **k), inputs, use=use)
    assert_close(out, out_ref.flip(-1), 1e-5, 'out')
    for k in use:
        assert_close(g[k], g_ref[k].flip(-1) if g_ref[k].dim() == 3 else g_ref[k], 1e-5, k)


def test_numba_forward_without_grad():
    """Without gradients the forward keeps no checkpoints; results are the same."""
    inputs = make_inputs(batch=2, dim=70, dstate=16, length=40, seed=12)
    with torch.no_grad():
        out = numba_scan(**inputs, delta_softplus=True)
    assert_close(out, selective_scan_ref(**inputs, delta_softplus=True), 1e-5, 'out')


def test_numba_any_layout():
    """Channels-last views and a gate sliced out of a wider tensor (the ViM mixer's layouts) give the same results."""
    inputs = make_inputs(batch=2, dim=70, dstate=16, length=41, seed=21)
    wide = torch.cat([inputs['z'], torch.randn_like(inputs['z'])], dim=1).transpose(1, 2).contiguous()  # (B, L, 2E)
    views = dict(inputs, u=inputs['u'].transpose(1, 2).contiguous().transpose(1, 2),
                 delta=inputs['delta'].transpose(1, 2).contiguous().transpose(1, 2), z=wide[..., :70].transpose(1, 2),
                 B=inputs['B'].transpose(1, 2).contiguous().transpose(1, 2))
    assert not views['z'].is_contiguous()
    check(views)


def test_polynomial_exponentials():
    """The kernels' vectorisable exp (Cody-Waite reduction) and exp2 (the state decays) against float64 on a dense
    grid of fp32 inputs, including the clamped ends: relative error near fp32 rounding."""
    from numba import njit

    from vim_wsss.ops import scan_numba

    @njit
    def apply(fn, xs):
        out = np.empty_like(xs)
        for i in range(xs.size):
            out[i] = fn(xs[i])
        return out

    for lo, hi, bound in [(-87, 88, 4e-7), (-10, 10, 1.5e-7)]:
        xs = np.linspace(lo, hi, 400_001).astype(np.float32)
        rel = np.abs(apply(scan_numba._exp, xs) / np.exp(xs.astype(np.float64)) - 1)
        assert rel.max() < bound, (lo, hi, rel.max())
    ts = np.concatenate([np.linspace(-125.0, 125.0, 400_001), np.linspace(-1, 1, 100_001)]).astype(np.float32)
    rel = np.abs(apply(scan_numba._exp2, ts) / np.exp2(ts.astype(np.float64)) - 1)
    assert rel.max() < 1.2e-7, rel.max()
    ends = apply(scan_numba._exp2, np.array([-1e9, -300.0, 300.0, 1e9], np.float32))
    np.testing.assert_allclose(ends, 2.0 ** np.array([-125, -125, 125, 125]), rtol=2e-7)


@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-5), (torch.bfloat16, 2e-2)])
def test_numba_dtypes(dtype, rtol):
    """fp32 arithmetic for every input dtype, as the reference; outputs and gradients come back in the input dtypes."""
    inputs = make_inputs(length=21, seed=7)
    low = {k: (v.to(dtype) if k not in ('A', 'delta_bias') else v) for k, v in inputs.items()}
    check(low, rtol=rtol)


def test_auto_picks_numba_on_cpu(monkeypatch):
    monkeypatch.delenv('VIM_WSSS_SCAN', raising=False)
    u = torch.zeros(1, 2, 3)
    assert resolve_scan_impl(u) == 'numba' and resolve_scan_impl(u, 'auto') == 'numba'
    mod = importlib.import_module('vim_wsss.ops.selective_scan')
    calls = []
    fn = mod._IMPL_FUNCTIONS['numba']
    monkeypatch.setitem(mod._IMPL_FUNCTIONS, 'numba', lambda *a, **k: calls.append('numba') or fn(*a, **k))
    inputs = make_inputs(length=9, seed=2)
    with scan_impl('auto'):
        out = selective_scan(**inputs, delta_softplus=True)
    assert calls == ['numba']
    assert_close(out, selective_scan_ref(**inputs, delta_softplus=True), 1e-5)


def test_auto_falls_back_to_fast_without_numba(monkeypatch):
    mod = importlib.import_module('vim_wsss.ops.selective_scan')
    monkeypatch.setattr(mod, '_numba_fn', None)
    monkeypatch.setattr(mod, '_numba_error', "ModuleNotFoundError: No module named 'numba'")
    u = torch.zeros(1, 2, 3)
    with pytest.warns(RuntimeWarning, match="uses 'fast'.*pip install numba"):
        assert resolve_scan_impl(u, 'auto') == 'fast'
    with pytest.raises(RuntimeError, match='pip install numba'):
        mod.set_scan_impl('numba')
    with pytest.raises(RuntimeError, match='pip install numba'):
        selective_scan(**make_inputs(), impl='numba')


def test_vim_mixer_numba_matches_ref():
    """The ViM mixer (unfused dt + bias, reverse scan for the backward direction) on numba against the reference."""
    from vim_wsss.models.vim import BiMambaMixer
    torch.manual_seed(0)
    mixer = BiMambaMixer(24, d_state=8)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hidden = torch.randn(2, 17, 24)
    results = {}
    for impl in ('ref', 'numba'):
        mixer.zero_grad()
        x = hidden.clone().requires_grad_()
        with scan_impl(impl):
            out = mixer(x)
        (out * torch.cos(out)).sum().backward()
        results[impl] = [out.detach(), x.grad] + [p.grad for p in mixer.parameters()]
    for got, want in zip(results['numba'], results['ref']):
        assert_close(got, want, 1e-5)
