"""The kernels on torch's OpenMP team (vim_wsss.ops.team) against the same kernels on numba's pool: identical
results for every kernel at 1 and 2 threads, fewer jobs than threads, concurrent callers, and the switch."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from test_scan import assert_close, make_inputs
from vim_wsss.ops import numba_available, selective_scan_ref

pytestmark = pytest.mark.skipif(not numba_available(), reason='numba is not installed')


@pytest.fixture
def team():
    from vim_wsss.ops import team
    if not team.team_available():
        pytest.skip('no OpenMP runtime with GOMP_parallel is loaded')
    return team


def on_pool(team, monkeypatch, fn):
    """fn() with the team switched off (numba's pool runs the kernels)."""
    with monkeypatch.context() as m:
        m.setattr(team, '_GOMP_PARALLEL', None)
        return fn()


def torch_openmp_loaded():
    with open('/proc/self/maps') as f:
        return any('libgomp' in line for line in f)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the team is looked up in /proc/self/maps')
def test_team_is_used_where_torch_loads_libgomp():
    from vim_wsss.ops import team
    torch.zeros(4).add_(1)  # torch is loaded, and with it its OpenMP runtime
    assert team.team_available() == torch_openmp_loaded()


def scan_all(inputs):
    from vim_wsss.ops.scan_numba import selective_scan_numba
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan_numba(**leaves, delta_softplus=True, return_last_state=True, reverse=True)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out, last] + [leaves[k].grad for k in sorted(leaves)]


def conv_all(x, weight, bias, reverse):
    from vim_wsss.ops.conv_numba import causal_conv1d_silu_numba
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    conv, u = causal_conv1d_silu_numba(*leaves, reverse=reverse)
    (conv.sin().sum() + u.cos().sum()).backward()
    return [conv, u] + [t.grad for t in leaves]


@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('batch,dim', [(2, 200), (1, 6)])  # 8 jobs; 1 job, fewer than the threads
def test_scan_team_equals_pool(team, monkeypatch, threads, batch, dim):
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(batch=batch, dim=dim, dstate=16, length=37, seed=dim)
        on_team = scan_all(inputs)
        pooled = on_pool(team, monkeypatch, lambda: scan_all(inputs))
    finally:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    assert all(torch.equal(a, b) for a, b in zip(on_team, pooled))
    flipped = {k: (v.flip(-1) if v.dim() == 3 else v) for k, v in inputs.items()}
    assert_close(on_team[0], selective_scan_ref(**flipped, delta_softplus=True).flip(-1), 1e-5, 'out')


@pytest.mark.parametrize('reverse', [False, True])
def test_conv_team_equals_pool(team, monkeypatch, reverse):
    g = torch.Generator().manual_seed(3)
    x, weight, bias = torch.randn(3, 29, 300, generator=g), torch.randn(300, 4, generator=g), torch.randn(300)
    on_team = conv_all(x, weight, bias, reverse)
    pooled = on_pool(team, monkeypatch, lambda: conv_all(x, weight, bias, reverse))
    assert all(torch.equal(a, b) for a, b in zip(on_team, pooled))


def test_attention_kernel_team_equals_pool(team, monkeypatch):
    from vim_wsss.explain import relevance_maps
    from vim_wsss.models import create_model
    torch.manual_seed(0)
    model = create_model('vim_test_patch8_64', num_classes=20).eval()
    images, classes = torch.randn(2, 3, 64, 64), torch.tensor([[3, 5], [1, 2]])
    on_team = relevance_maps(model, images, classes, 'transformer_attr', normalize=False)
    pooled = on_pool(team, monkeypatch, lambda: relevance_maps(model, images, classes, 'transformer_attr',
                                                                normalize=False))
    assert on_team.abs().max() > 0 and torch.equal(on_team, pooled)


def test_concurrent_callers(team):
    """Python threads calling the scan at once (each gets its own OpenMP team) get their own, correct results."""
    inputs = [make_inputs(batch=2, dim=70, dstate=16, length=41, seed=s) for s in range(4)]
    results = [None] * 4

    def work(i):
        from vim_wsss.ops.scan_numba import selective_scan_numba
        with torch.no_grad():
            results[i] = selective_scan_numba(**inputs[i], delta_softplus=True)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(4):
        assert_close(results[i], selective_scan_ref(**inputs[i], delta_softplus=True), 1e-5, f'caller {i}')


def test_pack_takes_contiguous_fp32_only():
    from vim_wsss.ops.team import pack
    table = pack(5, (np.zeros((2, 3), np.float32), True, 7))
    assert table.dtype == np.int64 and list(table[:2]) == [0, 5] and list(table[3:]) == [2, 3, 1, 7]
    with pytest.raises(TypeError, match='C-contiguous float32'):
        pack(1, (np.zeros((2, 3), np.float64),))
    with pytest.raises(TypeError, match='C-contiguous float32'):
        pack(1, (np.zeros((3, 2), np.float32).T,))


def test_switch_off_by_environment():
    code = 'import torch; from vim_wsss.ops import team; print(team.team_available())'
    env = dict(os.environ, VIM_WSSS_OMP_TEAM='0')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'
