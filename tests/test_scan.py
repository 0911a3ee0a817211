"""Selective scan: every implementation against the sequential reference (outputs and gradients of all inputs)."""
import importlib
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from vim_wsss.ops import (cuda_kernel_available, get_scan_impl, numba_available, resolve_scan_impl, scan_impl,
                          selective_scan, selective_scan_fast, selective_scan_ref, set_scan_impl)

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def make_inputs(batch=2, dim=6, dstate=4, length=23, dtype=torch.float32, device='cpu', seed=0):
    """Fresh random scan inputs; D, z and delta_bias are non-zero, A is negative (stable)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)

    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5, shift=-1.0),
                A=-torch.exp(rnd(dim, dstate, scale=0.5)).float(), B=rnd(batch, dstate, length),
                C=rnd(batch, dstate, length), D=rnd(dim), z=rnd(batch, dim, length),
                delta_bias=rnd(dim, scale=0.3).float())


def run(fn, inputs, use=NAMES, softplus=True, last_state=False, **kw):
    """Output and gradients of a non-trivial loss w.r.t. every input in `use`."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    args = {k: (leaves[k] if k in use else None) for k in ('D', 'z', 'delta_bias')}
    out = fn(leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], **args,
             delta_softplus=softplus, return_last_state=last_state, **kw)
    if last_state:
        out, state = out
        loss = (out.float() * torch.cos(out.float())).sum() + (state * state.detach().sin()).sum()
    else:
        loss = (out.float() * torch.cos(out.float())).sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in use])
    return out, dict(zip(use, grads))


def assert_close(actual, expected, rtol, name=''):
    """Elementwise relative tolerance with an absolute floor scaled by the tensor's magnitude."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * max(scale, 1e-12),
                               msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('length,chunk', [(1, None), (23, None), (23, 1), (23, 5), (37, 64)])
def test_fast_matches_ref_fp32(length, chunk):
    inputs = make_inputs(length=length, seed=length)
    out_ref, g_ref = run(selective_scan_ref, inputs)
    out_fast, g_fast = run(selective_scan_fast, inputs, chunk=chunk)
    assert out_fast.dtype == torch.float32
    assert_close(out_fast, out_ref, 1e-5, 'out')
    for k in NAMES:
        assert g_fast[k].dtype == inputs[k].dtype
        assert_close(g_fast[k], g_ref[k], 1e-5, k)


@pytest.mark.parametrize('use,softplus', [(('u', 'delta', 'A', 'B', 'C'), False),
                                          (('u', 'delta', 'A', 'B', 'C', 'D'), True),
                                          (('u', 'delta', 'A', 'B', 'C', 'z'), False)])
def test_fast_matches_ref_optional_args(use, softplus):
    inputs = make_inputs(length=19, seed=3)
    if not softplus:  # keep the step sizes positive without softplus
        inputs['delta'] = inputs['delta'].abs() * 0.3
    out_ref, g_ref = run(selective_scan_ref, inputs, use=use, softplus=softplus)
    out_fast, g_fast = run(selective_scan_fast, inputs, use=use, softplus=softplus, chunk=4)
    assert_close(out_fast, out_ref, 1e-5, 'out')
    for k in use:
        assert_close(g_fast[k], g_ref[k], 1e-5, k)


def test_fast_last_state_and_gradient():
    inputs = make_inputs(length=17, seed=5)
    (out_ref, g_ref), (out_fast, g_fast) = (run(fn, inputs, last_state=True) for fn in
                                            (selective_scan_ref, selective_scan_fast))
    assert_close(out_fast, out_ref, 1e-5, 'out')
    for k in NAMES:
        assert_close(g_fast[k], g_ref[k], 1e-5, k)
    _, state_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    _, state_fast = selective_scan_fast(**inputs, delta_softplus=True, return_last_state=True, chunk=3)
    assert state_fast.shape == (2, 6, 4)
    assert_close(state_fast, state_ref, 1e-5, 'last_state')


def test_ref_matches_plain_recurrence():
    """The reference against an independent per-channel, per-state loop over the equations."""
    inputs = make_inputs(batch=1, dim=3, dstate=2, length=6, seed=11)
    out = selective_scan_ref(**inputs, delta_softplus=True)
    u, z, A, B, C, D = (inputs[k].double() for k in ('u', 'z', 'A', 'B', 'C', 'D'))
    delta = F.softplus(inputs['delta'].double() + inputs['delta_bias'].double()[:, None])
    expected = torch.zeros_like(u)
    for e in range(3):
        h = [0.0, 0.0]
        for t in range(6):
            y = 0.0
            for n in range(2):
                h[n] = torch.exp(delta[0, e, t] * A[e, n]) * h[n] + delta[0, e, t] * B[0, n, t] * u[0, e, t]
                y = y + C[0, n, t] * h[n]
            expected[0, e, t] = (y + D[e] * u[0, e, t]) * z[0, e, t] * torch.sigmoid(z[0, e, t])
    assert_close(out, expected, 1e-5)


@pytest.mark.parametrize('dtype,rtol', [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_fast_low_precision(dtype, rtol):
    inputs = make_inputs(length=21, seed=7)
    low = {k: (v.to(dtype) if k not in ('A', 'delta_bias') else v) for k, v in inputs.items()}
    out_ref, g_ref = run(selective_scan_ref, low)
    out_fast, g_fast = run(selective_scan_fast, low, chunk=4)
    assert out_fast.dtype == dtype and out_ref.dtype == dtype
    assert_close(out_fast, out_ref, rtol, 'out')  # same fp32 arithmetic; only output rounding differs
    for k in NAMES:
        assert g_fast[k].dtype == low[k].dtype
        assert_close(g_fast[k], g_ref[k], rtol, k)
    out_fp32, _ = run(selective_scan_ref, {k: v.float() for k, v in low.items()})
    assert_close(out_fast, out_fp32, rtol, 'out vs fp32')


def test_fp32_inside_autocast():
    """An autocast region (which would run matmuls/einsums in bf16) does not lower the scan's precision."""
    inputs = make_inputs(length=40, dim=32, dstate=16, seed=23)
    out_ref, g_ref = run(selective_scan_ref, inputs)
    numba = [lambda *a, **k: selective_scan(*a, impl='numba', **k)] if numba_available() else []
    for fn in [selective_scan_ref, selective_scan_fast] + numba:
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        with torch.autocast('cpu', dtype=torch.bfloat16):  # forward in the region, backward outside (AMP usage)
            out = fn(**leaves, delta_softplus=True)
        assert out.dtype == torch.float32
        assert_close(out, out_ref, 1e-5, 'out')
        grads = torch.autograd.grad((out * torch.cos(out)).sum(), list(leaves.values()))
        for k, g in zip(leaves, grads):
            assert_close(g, g_ref[k], 1e-5, k)


def test_shape_errors():
    inputs = make_inputs()
    with pytest.raises(ValueError, match='B must have shape'):
        selective_scan_fast(**dict(inputs, B=inputs['B'][:, :, :-1]))
    with pytest.raises(ValueError, match='A must be real'):
        selective_scan_ref(**dict(inputs, A=inputs['A'][:-1]))


def test_dispatch_settings(monkeypatch):
    monkeypatch.delenv('VIM_WSSS_SCAN', raising=False)
    set_scan_impl(None)
    assert get_scan_impl() == 'auto'
    u = torch.zeros(1, 2, 3)
    assert resolve_scan_impl(u) == ('numba' if numba_available() else 'fast')
    monkeypatch.setenv('VIM_WSSS_SCAN', 'ref')
    assert get_scan_impl() == 'ref' and resolve_scan_impl(u) == 'ref'
    with scan_impl('fast'):
        assert get_scan_impl() == 'fast'
        with scan_impl('ref'):
            assert get_scan_impl() == 'ref'
        assert get_scan_impl() == 'fast'
    assert get_scan_impl() == 'ref'
    monkeypatch.setenv('VIM_WSSS_SCAN', 'bogus')
    with pytest.raises(ValueError, match='VIM_WSSS_SCAN'):
        get_scan_impl()
    with pytest.raises(ValueError, match='unknown'):
        set_scan_impl('mamba')
    monkeypatch.delenv('VIM_WSSS_SCAN')


def test_dispatch_routes_to_each_impl(monkeypatch):
    inputs = make_inputs(length=9, seed=2)
    calls = []
    mod = importlib.import_module('vim_wsss.ops.selective_scan')  # the module (the package exports the function)
    for name in ('ref', 'fast'):
        fn = mod._IMPL_FUNCTIONS[name]
        spy = (lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
        monkeypatch.setitem(mod._IMPL_FUNCTIONS, name, spy)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    for name in ('ref', 'fast'):
        with scan_impl(name):
            assert_close(selective_scan(**inputs, delta_softplus=True), expected, 1e-5, name)
        assert_close(selective_scan(**inputs, delta_softplus=True, impl=name), expected, 1e-5, name)
    assert calls == ['ref', 'ref', 'fast', 'fast']


@pytest.mark.skipif(cuda_kernel_available(), reason='the CUDA kernel is installed')
def test_cuda_impl_without_kernel_explains_install():
    with pytest.raises(RuntimeError, match='pip install'):
        set_scan_impl('cuda')
    with pytest.raises(RuntimeError, match='MAMBA_FORCE_BUILD'):
        selective_scan(**make_inputs(), impl='cuda')


def test_against_mamba_ssm_reference(monkeypatch):
    """Our reference and fast path against mamba-ssm's own selective_scan_ref, when mamba-ssm is installed."""
    if importlib.util.find_spec('mamba_ssm') is None:
        pytest.skip('mamba_ssm is not installed')
    try:
        import selective_scan_cuda  # noqa: F401
    except ImportError:  # CPU install: stub the extension so the module imports (install-notes section 6)
        monkeypatch.setitem(sys.modules, 'selective_scan_cuda', types.ModuleType('selective_scan_cuda'))
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as mamba_ref
    except Exception as err:  # pragma: no cover - depends on the local install
        pytest.skip(f'mamba_ssm does not import here: {err}')
    inputs = make_inputs(length=29, seed=13)
    out_m, g_m = run(mamba_ref, inputs)
    for fn in (selective_scan_ref, selective_scan_fast):
        out, g = run(fn, inputs)
        assert_close(out, out_m, 1e-5, fn.__name__)
        for k in NAMES:
            assert_close(g[k], g_m[k], 1e-5, f'{fn.__name__} {k}')


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fast_on_cuda_matches_ref():
    inputs = make_inputs(batch=3, dim=64, dstate=16, length=131, seed=17)
    out_ref, g_ref = run(selective_scan_ref, inputs)
    out_fast, g_fast = run(selective_scan_fast, {k: v.cuda() for k, v in inputs.items()})
    assert out_fast.is_cuda
    assert_close(out_fast.cpu(), out_ref, 1e-5, 'out')
    for k in NAMES:
        assert_close(g_fast[k].cpu(), g_ref[k], 1e-4, k)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_kernel_available(), reason='needs CUDA and the mamba-ssm kernel')
def test_cuda_kernel_matches_ref():
    inputs = make_inputs(batch=3, dim=64, dstate=16, length=131, seed=19)
    out_ref, g_ref = run(selective_scan_ref, inputs)
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    out_cuda, g_cuda = run(lambda *a, **k: selective_scan(*a, impl='cuda', **k), cuda_inputs)
    assert_close(out_cuda.cpu(), out_ref, 1e-4, 'out')
    for k in NAMES:
        assert_close(g_cuda[k].cpu(), g_ref[k], 1e-3, k)
