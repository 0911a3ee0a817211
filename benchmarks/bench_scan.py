"""Selective-scan benchmark: the fast pure-PyTorch scan vs the sequential reference, plus backbone throughput.

Scan shapes are ViM-S's (E=768, N=16) at L=197 (224 / patch 16) and L=785 (448 crops), batch 1 and 8, forward and
forward+backward. The reference is mamba-ssm's ``selective_scan_ref`` when importable, else ours (same algorithm).
Every ratio is measured in the same run. Also reports ViM-S and DeiT-S forward images/s (batch 8, 224, no grad).

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
import statistics
import sys
import time
import types
from typing import Callable, Dict, List, Optional, Tuple

import torch

from vim_wsss.models import create_model
from vim_wsss.ops import scan_impl, selective_scan_fast, selective_scan_ref
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
    """Random ViM-like scan inputs (delta goes through bias + softplus as in the model)."""
    g = torch.Generator().manual_seed(seed)
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length) - 2, A=-torch.exp(rnd(dim, dstate) * 0.5),
                B=rnd(batch, dstate, length), C=rnd(batch, dstate, length), D=rnd(dim), z=rnd(batch, dim, length),
                delta_bias=rnd(dim) * 0.5)


def call(fn: Callable, inputs: Dict[str, torch.Tensor], backward: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One forward (and backward of a weighted sum); returns the output and the input gradients."""
    if not backward:
        with torch.no_grad():
            return fn(**inputs, delta_softplus=True), []
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves, delta_softplus=True)
    weights = torch.linspace(-1, 1, out.shape[-1])
    grads = torch.autograd.grad((out * weights).sum(), list(leaves.values()))
    return out.detach(), list(grads)


def timed(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def bench_scan(shapes: List[Tuple[int, int]], reference: Callable, repeats: int,
               ref_bwd_limit: float) -> List[Dict[str, object]]:
    rows = []
    for length, batch in shapes:
        inputs = scan_inputs(batch, length)
        for backward in (False, True):
            row = dict(L=length, batch=batch, E=768, N=16, mode='fwd+bwd' if backward else 'fwd')
            t_fast = timed(lambda: call(selective_scan_fast, inputs, backward), repeats, warmup=1)
            row.update(fast_ms=1e3 * t_fast, ref_ms=None, speedup=None, max_rel_err_out=None, max_rel_err=None)
            # autograd through the reference's per-step slicing costs O(L^2 * B * E * N): skip the largest case
            if not backward or batch * length * length * 768 * 16 <= ref_bwd_limit:
                # timed run first (cold, like a user's call), then the outputs/gradients for the error
                t_ref = timed(lambda: call(reference, inputs, backward), 1 if backward else max(1, repeats // 2), 0)
                ref_out, ref_grads = call(reference, inputs, backward)
                fast_out, fast_grads = call(selective_scan_fast, inputs, backward)
                errors = [rel_err(fast_out, ref_out)] + [rel_err(a, b) for a, b in zip(fast_grads, ref_grads)]
                row.update(ref_ms=1e3 * t_ref, speedup=t_ref / t_fast, max_rel_err_out=errors[0],
                           max_rel_err=max(errors))
            rows.append(row)
            print_row(row)
    return rows


def bench_models(batch: int, img_size: int, repeats: int) -> List[Dict[str, object]]:
    rows = []
    x = torch.randn(batch, 3, img_size, img_size)
    for name in ('vim_small_patch16_224', 'deit_s_patch16_224'):
        model = create_model(name, img_size=img_size).eval()
        with torch.no_grad(), scan_impl('fast'):
            seconds = timed(lambda: model(x), repeats, warmup=1)
        rows.append(dict(model=name, batch=batch, img_size=img_size, scan='fast' if 'vim' in name else '-',
                         seconds_per_batch=seconds, images_per_s=batch / seconds))
        print(f'{name:24s} batch {batch} {img_size}px: {batch / seconds:7.2f} images/s ({seconds:.3f} s/batch)')
    return rows


def print_row(row: Dict[str, object]) -> None:
    head = f"L={row['L']:4d} B={row['batch']} {row['mode']:8s} fast {row['fast_ms']:8.1f} ms  "
    if row['ref_ms'] is None:
        print(head + 'ref skipped (--ref-bwd-limit)', flush=True)
        return
    print(head + f"ref {row['ref_ms']:10.1f} ms  x{row['speedup']:6.1f}  "
          f"max rel err out {row['max_rel_err_out']:.1e} / outputs+grads {row['max_rel_err']:.1e}", flush=True)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='small shapes, one repeat (smoke run)')
    parser.add_argument('--out', default=RESULTS, help='JSON output path')
    parser.add_argument('--ref-bwd-limit', type=float, default=1e10,
                        help='skip the reference fwd+bwd when B*L*L*E*N exceeds this (its autograd is quadratic in L)')
    args = parser.parse_args(argv)
    reference, ref_name = load_reference()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, reference: {ref_name}')
    if args.quick:
        shapes, repeats, model_batch, model_size = [(65, 1), (65, 2)], 1, 1, 64
    else:
        shapes, repeats, model_batch, model_size = [(197, 1), (197, 8), (785, 1), (785, 8)], 3, 8, 224
    scan_rows = bench_scan(shapes, reference, repeats, args.ref_bwd_limit)
    model_rows = bench_models(model_batch, model_size, repeats)
    payload = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=platform.processor() or
                   platform.machine(), reference=ref_name, quick=args.quick, scan=scan_rows, models=model_rows)
    atomic_save_json(args.out, payload)
    print(f'wrote {args.out}')
    return payload


if __name__ == '__main__':
    main()
