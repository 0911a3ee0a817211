"""Backbone benchmark: ViM vs DeiT forward and training-step time, per selective-scan implementation.

* forward: ViM-S vs DeiT-S, batch 2, 224 px, no grad (issue goal: ViM-S <= 2x DeiT-S on CPU);
* training step: ViM-mini vs DeiT-mini (the demo's models), batch 16, 64 px, multi-label BCE + AdamW
  (goal: <= 3x);
* on a CUDA machine also ViM-S vs DeiT-S forward + backward at 448 px, batch 8.

ViM runs with each scan implementation available ('fast', the pure-PyTorch path of before, and 'numba', the compiled
CPU kernel); every ratio is measured in the same run, at 1 and 2 threads. The mixer's causal conv + SiLU uses its
default (``conv_impl='auto'``: the compiled kernel on CPU when numba imports) with every scan implementation.
Random weights: speed does not depend on them.

Usage::

    python benchmarks/bench_models.py           # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_models.py --quick   # smoke run (tiny models)

Writes ``benchmarks/results/bench_models.json`` (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from vim_wsss.models import create_model
from vim_wsss.ops import numba_available, scan_impl
from vim_wsss.utils import atomic_save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'bench_models.json')


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: bool = False) -> float:
    """Fastest wall time in seconds: on a shared machine the minimum is the least disturbed run."""
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return min(times)


def scan_impls(device: str) -> List[str]:
    """Scan implementations to time ViM with; on CUDA the loop path 'fast' and 'auto' (mamba-ssm's kernel or Triton)."""
    if device == 'cuda':
        return ['fast', 'auto']
    return ['fast'] + (['numba'] if numba_available() else [])


def forward_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return model(x)
    return step


def train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], object]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        optimizer.step()
        return loss
    return step


def fwd_bwd_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        model(x).sum().backward()
    return step


def compare(task: str, names: Dict[str, str], make_step: Callable[[torch.nn.Module], Callable[[], object]],
            kwargs: Dict[str, object], threads: List[int], repeats: int, device: str = 'cpu') -> List[Dict[str, object]]:
    """Time DeiT and ViM (per scan implementation) at each thread count; ratio = ViM time / DeiT time.

    The candidates are timed in interleaved rounds (DeiT, ViM per implementation, DeiT, ...), each keeping its
    fastest call, so a slow phase of a shared machine hits all of them alike instead of one candidate's whole run."""
    models = {family: create_model(name, **kwargs).to(device) for family, name in names.items()}
    sync = device == 'cuda'
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        steps = {'deit': make_step(models['deit'])}
        steps.update({impl: make_step(models['vim']) for impl in scan_impls(device)})
        best = {key: float('inf') for key in steps}
        for round_ in range(repeats):
            for key, step in steps.items():
                with scan_impl(key if key != 'deit' else 'auto'):
                    best[key] = min(best[key], timed(step, 1, warmup=1 if round_ == 0 else 0, sync=sync))
        for impl in scan_impls(device):
            row = dict(task=task, device=device, threads=n_threads, scan=impl, vim=names['vim'], deit=names['deit'],
                       vim_s=best[impl], deit_s=best['deit'], ratio=best[impl] / best['deit'])
            rows.append(row)
            print(f"{task:28s} {device} {n_threads}T scan {impl:5s}: ViM {1e3 * row['vim_s']:8.1f} ms  DeiT "
                  f"{1e3 * row['deit_s']:8.1f} ms  ratio {row['ratio']:5.2f}", flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny models and inputs, one repeat (smoke run)')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='thread counts to time')
    parser.add_argument('--out', default=RESULTS, help='JSON output path')
    args = parser.parse_args(argv)
    threads = sorted(args.threads)
    print(f'torch {torch.__version__}, threads {threads}, numba: {numba_available()}')
    torch.manual_seed(0)
    repeats = 1 if args.quick else 10
    big = dict(vim='vim_test_patch8_64', deit='deit_test_patch8_64') if args.quick else \
        dict(vim='vim_small_patch16_224', deit='deit_s_patch16_224')
    mini = dict(vim='vim_test_patch8_64', deit='deit_test_patch8_64') if args.quick else \
        dict(vim='vim_mini_patch8_64', deit='deit_mini_patch8_64')
    size, batch = (64, 2) if args.quick else (224, 2)
    x = torch.randn(batch, 3, size, size)
    rows = compare(f'forward b{batch} {size}px', big, lambda m: forward_step(m.eval(), x), dict(img_size=size),
                   threads, repeats)
    xb, target = torch.randn(16, 3, 64, 64), (torch.rand(16, 20) > 0.8).float()
    rows += compare('train step b16 64px', mini, lambda m: train_step(m.train(), xb, target),
                    dict(img_size=64, num_classes=20), threads, repeats)
    if torch.cuda.is_available():
        size = 64 if args.quick else 448
        xg = torch.randn(8, 3, size, size, device='cuda')
        rows += compare(f'fwd+bwd b8 {size}px', big, lambda m: fwd_bwd_step(m.train(), xg), dict(img_size=size),
                        [torch.get_num_threads()], repeats, device='cuda')
    payload = dict(torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, quick=args.quick,
                   rows=rows)
    atomic_save_json(args.out, payload)
    print(f'wrote {args.out}')
    return payload


if __name__ == '__main__':
    main()
