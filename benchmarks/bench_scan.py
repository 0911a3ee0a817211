"""Selective-scan benchmark: the compiled CPU scan (numba) and the fast pure-PyTorch scan vs the sequential reference.

Scan shapes are ViM-S's (E=768, N=16) at L=197 (224 / patch 16) and L=785 (448 crops), batch 1 and 8, forward and
forward+backward, each at 1 and 2 threads (``torch.set_num_threads``; the numba kernel follows it). Inputs are laid
out as the ViM mixer produces them (channels-last views, ``delta`` before bias + softplus, which the scan applies).
The reference is mamba-ssm's ``selective_scan_ref`` when importable, else ours (same algorithm); it is timed once,
at the smallest thread count, and every implementation's outputs and gradients are compared with it. Every ratio is
measured in the same run; the gradient-requiring input copies of the fwd+bwd cases are made once per case,
outside the timed calls. With CUDA present the fast path, the Triton kernel and mamba-ssm's kernel (when installed)
are also timed on the GPU. Model-level ratios (ViM-S vs DeiT-S, training steps) are in ``bench_models.py``.

Usage::

    python benchmarks/bench_scan.py            # full run (minutes on 2 CPU cores; the reference backward is slow,
                                               # its L=785 batch-8 case is skipped unless --ref-bwd-limit is raised)
    python benchmarks/bench_scan.py --quick    # smoke run with small shapes

Writes ``benchmarks/results/bench_scan.json`` (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import types
from typing import Callable, Dict, List, Optional, Tuple

import torch

from vim_wsss.ops import (cuda_kernel_available, numba_available, selective_scan, selective_scan_fast, selective_scan_ref,
                          triton_available)
from vim_wsss.utils import atomic_save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'bench_scan.json')


def load_reference() -> Tuple[Callable, str]:
    """mamba-ssm's selective_scan_ref if it imports (with a stub for its CUDA extension), else ours."""
    try:
        try:
            import selective_scan_cuda  # noqa: F401
        except ImportError:
            sys.modules.setdefault('selective_scan_cuda', types.ModuleType('selective_scan_cuda'))
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as mamba_ref
        return mamba_ref, 'mamba_ssm.selective_scan_ref'
    except Exception:
        return selective_scan_ref, 'vim_wsss.ops.selective_scan_ref (same algorithm as mamba-ssm)'


def scan_inputs(batch: int, length: int, dim: int = 768, dstate: int = 16, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random ViM-like scan inputs (delta goes through bias + softplus as in the model), channels-last views."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    def seq(channels: int, shift: float = 0.0) -> torch.Tensor:  # (B, X, L) view of a (B, L, X) tensor
        return (rnd(batch, length, channels) + shift).transpose(1, 2)

    return dict(u=seq(dim), delta=seq(dim, -2.0), A=-torch.exp(rnd(dim, dstate) * 0.5), B=seq(dstate), C=seq(dstate),
                D=rnd(dim), z=seq(dim), delta_bias=rnd(dim) * 0.5)


def leaves_of(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Gradient-requiring copies (same layout) of the inputs, made once per case, outside the timed calls."""
    return {k: v.clone().requires_grad_() for k, v in inputs.items()}


def call(fn: Callable, inputs: Dict[str, torch.Tensor], backward: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One forward (and backward of a weighted sum; then the inputs must be leaves requiring grad, see
    :func:`leaves_of`); returns the output and the input gradients."""
    if not backward:
        with torch.no_grad():
            return fn(**inputs, delta_softplus=True), []
    leaves = inputs
    out = fn(**leaves, delta_softplus=True)
    weights = torch.linspace(-1, 1, out.shape[-1])
    grads = torch.autograd.grad((out * weights).sum(), list(leaves.values()))
    return out.detach(), list(grads)


def timed(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Fastest wall time in seconds: on a shared machine the minimum is the least disturbed run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def implementations(device: str) -> Dict[str, Callable]:
    """The scans timed on ``device``: 'fast' always (on CUDA the loop of small kernels), 'numba' on CPU when it
    imports, on CUDA 'triton' when it imports and mamba-ssm's 'cuda' kernel when installed."""
    names = ['numba'] if device == 'cpu' and numba_available() else []
    if device == 'cuda':
        names += ['triton'] if triton_available() else []
        names += ['cuda'] if cuda_kernel_available() else []
    impls = {'fast': selective_scan_fast}
    for name in names:
        impls[name] = lambda *a, _name=name, **k: selective_scan(*a, impl=_name, **k)
    return impls


def reference_errors(reference: Callable, impls: Dict[str, Callable], inputs: Dict[str, torch.Tensor],
                     backward: bool) -> Tuple[float, Dict[str, float]]:
    """Time the reference once; max relative error (outputs and all gradients) of each implementation against it."""
    t_ref = timed(lambda: call(reference, inputs, backward), 1, 0)
    ref_out, ref_grads = call(reference, inputs, backward)
    errors = {}
    for name, fn in impls.items():
        moved = {k: v.detach().to(ref_out.device) for k, v in inputs.items()}
        out, grads = call(fn, leaves_of(moved) if backward else moved, backward)
        errors[name] = max([rel_err(out.cpu(), ref_out)] + [rel_err(a.cpu(), b) for a, b in zip(grads, ref_grads)])
    return t_ref, errors


def bench_scan(shapes: List[Tuple[int, int]], reference: Callable, repeats: int, ref_bwd_limit: float,
               threads: List[int], device: str = 'cpu') -> List[Dict[str, object]]:
    """One row per (shape, mode, thread count): time per implementation, speedup of each over 'fast', and (at the
    smallest thread count, CPU only) the reference time and every implementation's error against it."""
    rows = []
    impls = implementations(device)
    for length, batch in shapes:
        plain = {k: v.to(device) for k, v in scan_inputs(batch, length).items()}
        for backward in (False, True):
            inputs = leaves_of(plain) if backward else plain
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                row = dict(device=device, L=length, batch=batch, E=768, N=16, mode='fwd+bwd' if backward else 'fwd',
                           threads=n_threads, ref_ms=None, errors=None)
                for name, fn in impls.items():
                    row[f'{name}_ms'] = 1e3 * timed(lambda: call(fn, inputs, backward), repeats, warmup=1)
                for name in impls:
                    row[f'{name}_vs_fast'] = row['fast_ms'] / row[f'{name}_ms']
                # autograd through the reference's per-step slicing costs O(L^2 * B * E * N): skip the largest case
                small = not backward or batch * length * length * 768 * 16 <= ref_bwd_limit
                if device == 'cpu' and n_threads == threads[0] and small:
                    t_ref, row['errors'] = reference_errors(reference, impls, inputs, backward)
                    row['ref_ms'] = 1e3 * t_ref
                rows.append(row)
                print_row(row, list(impls))
    return rows


def print_row(row: Dict[str, object], names: List[str]) -> None:
    head = f"{row['device']:4s} L={row['L']:4d} B={row['batch']} {row['mode']:8s} {row['threads']}T "
    times = '  '.join(f"{n} {row[f'{n}_ms']:8.1f} ms (x{row[f'{n}_vs_fast']:4.1f})" for n in names)
    tail = ''
    if row['ref_ms'] is not None:
        errors = ' '.join(f'{n} {e:.1e}' for n, e in row['errors'].items())
        tail = f"  ref {row['ref_ms']:9.1f} ms  max rel err vs ref: {errors}"
    print(head + times + tail, flush=True)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='small shapes, one repeat (smoke run)')
    parser.add_argument('--out', default=RESULTS, help='JSON output path')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='thread counts to time')
    parser.add_argument('--ref-bwd-limit', type=float, default=1e10,
                        help='skip the reference fwd+bwd when B*L*L*E*N exceeds this (its autograd is quadratic in L)')
    args = parser.parse_args(argv)
    reference, ref_name = load_reference()
    print(f'torch {torch.__version__}, threads {args.threads}, reference: {ref_name}, numba: {numba_available()}')
    if args.quick:
        shapes, repeats = [(65, 1), (65, 2)], 1
    else:
        shapes, repeats = [(197, 1), (197, 8), (785, 1), (785, 8)], 5
    rows = bench_scan(shapes, reference, repeats, args.ref_bwd_limit, sorted(args.threads))
    if torch.cuda.is_available():
        rows += bench_scan(shapes, reference, repeats, 0, [torch.get_num_threads()], device='cuda')
    payload = dict(torch=torch.__version__, threads=sorted(args.threads), cpu=platform.processor() or
                   platform.machine(), gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                   reference=ref_name, quick=args.quick, scan=rows)
    atomic_save_json(args.out, payload)
    print(f'wrote {args.out}')
    return payload


if __name__ == '__main__':
    main()
