"""The Triton scan against the sequential reference: on a GPU for real, on CPU under Triton's interpreter.

Triton's interpreter has to be switched on (``TRITON_INTERPRET=1``) before triton is first imported, and importing
vim_wsss already imports it (timm -> torch._dynamo -> triton). So without CUDA, ``test_kernels_under_interpreter``
re-runs this file in a child pytest with ``TRITON_INTERPRET=1``, where the kernel tests run on CPU tensors, on small
shapes; in the parent they are skipped.
"""
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from test_scan import NAMES, assert_close, make_inputs, run  # noqa: F401
from vim_wsss.ops import resolve_scan_impl, selective_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
RUNNABLE = DEVICE == 'cuda' or os.environ.get('TRITON_INTERPRET') == '1'
kernel_test = pytest.mark.skipif(not RUNNABLE, reason='no CUDA: run under the interpreter by a child pytest')


@pytest.mark.skipif(RUNNABLE, reason='the kernel tests run directly here')
def test_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert '8 passed' in proc.stdout, proc.stdout[-2000:]  # every kernel test ran, none skipped


def triton_scan_fn(*args, **kwargs):
    return selective_scan(*args, impl='triton', **kwargs)


def check(inputs, rtol=1e-5, reverse=False, **kw):
    ref_inputs = {k: (v.flip(-1) if reverse and v.dim() == 3 else v) for k, v in inputs.items()}
    out_ref, g_ref = run(selective_scan_ref, ref_inputs, **kw)
    dev = {k: v.to(DEVICE) for k, v in inputs.items()}
    out, g = run(lambda *a, **k: triton_scan_fn(*a, reverse=reverse, **k), dev, **kw)
    unflip = (lambda x: x.flip(-1)) if reverse else (lambda x: x)
    assert out.dtype == out_ref.dtype
    assert_close(out.cpu(), unflip(out_ref), rtol, 'out')
    for k in g_ref:
        assert g[k].dtype == inputs[k].dtype
        assert_close(g[k].cpu(), unflip(g_ref[k]) if g_ref[k].dim() == 3 else g_ref[k], rtol, k)


@kernel_test
# E = 6 (one partial block), 40 (a full 32-channel block + a partial one), L = 1, L = 37 (three state chunks)
@pytest.mark.parametrize('batch,dim,dstate,length', [(2, 6, 4, 23), (1, 5, 3, 1), (1, 40, 5, 37)])
def test_triton_matches_ref(batch, dim, dstate, length):
    check(make_inputs(batch=batch, dim=dim, dstate=dstate, length=length, seed=length + dim))


@kernel_test
def test_triton_reverse_and_last_state():
    check(make_inputs(dim=7, length=29, seed=9), reverse=True, last_state=True)
    inputs = make_inputs(dim=7, length=21, seed=4)
    _, state_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    _, state = triton_scan_fn(**{k: v.to(DEVICE) for k, v in inputs.items()}, delta_softplus=True,
                              return_last_state=True)
    assert_close(state.cpu(), state_ref, 1e-5, 'last_state')


@kernel_test
@pytest.mark.parametrize('use,softplus', [(('u', 'delta', 'A', 'B', 'C'), False),
                                          (('u', 'delta', 'A', 'B', 'C', 'z', 'delta_bias'), True)])
def test_triton_optional_args(use, softplus):
    inputs = make_inputs(length=11, seed=3)
    if not softplus:
        inputs['delta'] = inputs['delta'].abs() * 0.3
    check(inputs, use=use, softplus=softplus)


@kernel_test
def test_triton_fp64_and_strided_inputs():
    inputs = make_inputs(length=13, dim=9, seed=6)
    check({k: (v.double() if k not in ('A', 'delta_bias') else v) for k, v in inputs.items()})
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v) for k, v in inputs.items()}
    check(views)


def test_auto_uses_triton_on_cuda_without_mamba_ssm(monkeypatch):
    dispatch = importlib.import_module('vim_wsss.ops.selective_scan')
    monkeypatch.setattr(dispatch, '_load_cuda_kernel', lambda: None)
    cuda_like = type('CudaLike', (), {'is_cuda': True, 'device': torch.device('cpu')})()
    assert resolve_scan_impl(cuda_like, 'auto') == 'triton'
    monkeypatch.setattr(dispatch, '_load_triton_kernel', lambda: None)
    assert resolve_scan_impl(cuda_like, 'auto') == 'fast'
