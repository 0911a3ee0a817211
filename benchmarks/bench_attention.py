"""Implicit-attention benchmark: vectorised ``vim_wsss.explain`` vs the reference algorithms, at ViM-S shapes.

Shapes: E=768 inner channels, N=16 states, K=4 conv taps, L=197 (224 / patch 16) and L=785 (448 crops), batch 1,
one scan direction, random realistic inputs (delta = softplus(randn - 2), A = -(1..16), the middle class token).

(a) class-token rows: ``mamba_attention(rows=[cls])`` vs the reference algorithm re-implemented here with the public
    code's semantics (UnifiedImplicitAttnRepr ``compute_last_attn_vector``: a Python loop over positions c <= cls, each
    a ``cumprod`` of exp(delta A) over c+1..cls, then the sigmoid / flipped-conv / gate folding of
    ``MambaInnerFnNoOutProj``). Both are run in full and their outputs compared.
(b) full matrices: ``mamba_attention`` (full L x L per channel) vs the naive reference (``compute_last_attn_matrix``
    triple loop + ``conv2Mat`` loop + dense ``gate @ attn @ Z @ M`` products). The naive version is far too slow to
    run: a few rows of its triple loop, a few channels of ``conv2Mat`` and of the dense products are timed and
    extrapolated (the output says so).
(c) peak extra memory of each measured computation: max-RSS growth (``resource.getrusage``) in a fresh subprocess
    that first builds its inputs, then runs the computation once.
(d) all 24 layers' full bidirectional matrices for one 224 image with ViM-S sized random mixers (D=384), one layer
    at a time (each (1, 768, 197, 197) result is dropped before the next), plus the 24 class-token rows 'ours' uses.

Every ratio is measured in the same run. The machine may be shared: wall and process CPU times are both reported,
with the load average.

Usage::

    python benchmarks/bench_attention.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_attention.py --quick    # smoke run with small shapes (seconds)

Writes ``benchmarks/results/bench_attention.json`` (atomically).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from vim_wsss.explain.implicit_attention import mamba_attention
from vim_wsss.models.vim import BiMambaMixer, ScanInputs
from vim_wsss.utils import atomic_save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'bench_attention.json')
TAPS = 4


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------
def scan_inputs(chans: int, length: int, nstate: int = 16, seed: int = 0) -> Tuple[ScanInputs, torch.Tensor,
                                                                                    torch.Tensor]:
    """Random ViM-like inputs of one direction, batch 1. Returns (ScanInputs, raw dt, dt bias)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    dt_raw, dt_bias = rnd(1, chans, length) - 2, torch.zeros(chans)
    delta = F.softplus(dt_raw + dt_bias[:, None])
    A = -torch.arange(1, nstate + 1, dtype=torch.float32).repeat(chans, 1)  # -exp(log(1..N))
    x, z = rnd(1, chans, length), rnd(1, chans, length)
    weight, bias = rnd(chans, TAPS) * 0.5, rnd(chans) * 0.1
    conv_out = F.conv1d(x, weight[:, None], bias, padding=TAPS - 1, groups=chans)[..., :length]
    ins = ScanInputs(x=x, z=z, conv_out=conv_out, u=F.silu(conv_out), delta=delta, A=A, B=rnd(1, nstate, length),
                     C=rnd(1, nstate, length), D=torch.ones(chans), conv_weight=weight, conv_bias=bias)
    return ins, dt_raw, dt_bias


# ----------------------------------------------------------------------------------------------------------------
# reference algorithms (the public code's semantics, re-implemented)
# ----------------------------------------------------------------------------------------------------------------
def reference_row(ins: ScanInputs, dt_raw: torch.Tensor, dt_bias: torch.Tensor, pos: int) -> torch.Tensor:
    """Class-token row as ``compute_last_attn_vector`` + the folding in ``MambaInnerFnNoOutProj``: ``(1, E, L)``."""
    dt = F.softplus(dt_raw + dt_bias[None, :, None])
    dA = torch.exp(torch.einsum('bdl,dn->bldn', dt, ins.A))  # (B, L, E, N)
    dB = torch.einsum('bdl,bnl->bldn', dt, ins.B)
    curr_C = ins.C[:, None, :, pos]  # (B, 1, N)
    row = torch.zeros(dt.shape)
    for c in range(pos + 1):
        if c < pos:
            curr_A = torch.cumprod(dA[:, c + 1:pos + 1], dim=1)[:, -1]
        else:
            curr_A = torch.ones(dA.shape[0], dA.shape[2], dA.shape[3])
        row[:, :, c] = torch.sum(curr_C * curr_A * dB[:, c], dim=-1)
    length = dt.shape[-1]
    temp = row * torch.sigmoid(ins.conv_out)
    conv = F.conv1d(temp, ins.conv_weight.flip(-1)[:, None], groups=dt.shape[1], padding=TAPS)[..., TAPS:length + TAPS]
    return F.silu(ins.z[:, :, pos])[..., None] * conv


def naive_matrix_row(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, r: int) -> torch.Tensor:
    """Row r of ``compute_last_attn_matrix`` (triple loop: products of dA one by one)."""
    out = torch.zeros(dA.shape[0], dA.shape[2], dA.shape[1])
    for c in range(r + 1):
        curr_A = torch.ones(dA.shape[0], dA.shape[2], dA.shape[3])
        for i in range(r - c):
            curr_A = curr_A * dA[:, r - i]
        out[:, :, c] = torch.sum(C[:, None, :, r] * curr_A * dB[:, c], dim=-1)
    return out


def conv2mat(weight: torch.Tensor, length: int) -> torch.Tensor:
    """``conv2Mat`` of the public code (Python loop over channels and positions), transposed as there."""
    chans, taps = weight.shape
    flipped = torch.flip(weight, [-1])
    mat = torch.zeros(chans, length, length)
    for h in range(chans):
        for i in range(length):
            mat[h, i, i:i + taps] = flipped[h, :max(0, taps - (i + taps - length))]
    return mat.transpose(-1, -2)


# ----------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], repeat: int = 1) -> Tuple[float, float, Any]:
    """Best (wall, process CPU) seconds over ``repeat`` runs, and the last result."""
    best_wall, best_cpu, out = math.inf, math.inf, None
    for _ in range(repeat):
        out = None
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, out


def bench_rows(chans: int, length: int, repeat: int) -> Dict[str, Any]:
    ins, dt_raw, dt_bias = scan_inputs(chans, length)
    cls = (length - 1) // 2
    ref_wall, ref_cpu, ref = timed(lambda: reference_row(ins, dt_raw, dt_bias, cls))
    our_wall, our_cpu, ours = timed(lambda: mamba_attention(None, None, internals={'f': ins}, direction='f',
                                                            rows=[cls])[:, :, 0], repeat=repeat)
    err = float((ours - ref).abs().max() / ref.abs().max())
    return dict(case='rows', E=chans, L=length, cls=cls, ref_wall_s=ref_wall, ref_cpu_s=ref_cpu, ours_wall_s=our_wall,
                ours_cpu_s=our_cpu, speedup=ref_wall / our_wall, max_rel_diff=err)


def bench_full(chans: int, length: int, repeat: int, loop_rows: List[int], probe_chans: int) -> Dict[str, Any]:
    ins, _, _ = scan_inputs(chans, length)
    our_wall, our_cpu, ours = timed(lambda: mamba_attention(None, None, internals={'f': ins}, direction='f'),
                                    repeat=repeat)
    # naive triple loop: time some rows, fit time(r) = a * r(r+1)/2 + b * (r+1) products / entries, extrapolate
    dA = torch.exp(torch.einsum('bdl,dn->bldn', ins.delta, ins.A))
    dB = torch.einsum('bdl,bnl->bldn', ins.delta, ins.B)
    samples = []
    for r in loop_rows:
        wall, _, row = timed(lambda: naive_matrix_row(dA, dB, ins.C, r))
        samples.append((r * (r + 1) / 2, r + 1.0, wall))
        if r == loop_rows[-1]:  # the loop's row agrees with ours (S6 part only)
            s6_row = mamba_attention(None, None, internals={'f': ins}, direction='f', parts=('s6',), rows=[r])
            loop_err = float((s6_row[:, :, 0] - row).abs().max() / row.abs().max())
    (p1, e1, t1), (p2, e2, t2) = samples[0], samples[-1]
    per_product = max((t2 - t1) / (p2 - p1), 0.0) if p2 != p1 else t2 / (p2 + e2)
    per_entry = max((t1 - per_product * p1) / e1, 0.0)
    total_products = sum(r * (r + 1) / 2 for r in range(length))
    total_entries = sum(r + 1 for r in range(length))
    loop_total = per_product * total_products + per_entry * total_entries
    # conv2Mat loop and dense products on a few channels, scaled to E
    conv_wall, _, M = timed(lambda: conv2mat(ins.conv_weight[:probe_chans], length))
    sub = torch.randn(probe_chans, length, length).tril_()

    def dense() -> torch.Tensor:
        gate = torch.diag_embed(F.silu(ins.z[0, :probe_chans]))
        Z = torch.diag_embed(torch.sigmoid(ins.conv_out[0, :probe_chans]))
        return gate @ sub @ Z @ M

    dense_wall, _, _ = timed(dense)
    scale = chans / probe_chans
    naive_total = loop_total + (conv_wall + dense_wall) * scale
    return dict(case='full', E=chans, L=length, ours_wall_s=our_wall, ours_cpu_s=our_cpu,
                naive_loop_rows_timed=loop_rows, naive_loop_extrapolated_s=loop_total,
                naive_conv2mat_dense_extrapolated_s=(conv_wall + dense_wall) * scale,
                naive_total_extrapolated_s=naive_total,
                speedup=naive_total / our_wall, loop_row_max_rel_diff=loop_err, output_mb=ours.numel() * 4 / 2 ** 20,
                note=f'naive time extrapolated from rows {loop_rows} of the triple loop and {probe_chans} channels of '
                     'conv2Mat + dense products')


def vim_s_layers(depth: int, d_model: int, length: int, seed: int = 0) -> Tuple[List[BiMambaMixer], List[torch.Tensor]]:
    torch.manual_seed(seed)
    mixers = [BiMambaMixer(d_model).eval() for _ in range(depth)]
    hidden = [torch.randn(1, length, d_model) for _ in range(depth)]
    return mixers, hidden


def run_layers(mixers: List[BiMambaMixer], hidden: List[torch.Tensor], rows: bool) -> float:
    total = 0.0
    with torch.no_grad():
        for mixer, h in zip(mixers, hidden):
            out = mamba_attention(mixer, h, rows=[h.shape[1] // 2] if rows else None)
            total += float(out[0, 0, 0, 0])
            del out
    return total


def bench_layers(depth: int, d_model: int, length: int) -> Dict[str, Any]:
    mixers, hidden = vim_s_layers(depth, d_model, length)
    run_layers(mixers[:1], hidden[:1], rows=False)  # warm-up
    full_wall, full_cpu, _ = timed(lambda: run_layers(mixers, hidden, rows=False))
    rows_wall, rows_cpu, _ = timed(lambda: run_layers(mixers, hidden, rows=True))
    return dict(case='layers', depth=depth, D=d_model, E=2 * d_model, L=length, full_wall_s=full_wall,
                full_cpu_s=full_cpu, rows_wall_s=rows_wall, rows_cpu_s=rows_cpu)


# ----------------------------------------------------------------------------------------------------------------
# peak memory in a subprocess
# ----------------------------------------------------------------------------------------------------------------
def child(case: str, chans: int, length: int, depth: int, threads: int) -> None:
    """Build inputs, note max RSS, run once, print the max-RSS growth in MB (JSON)."""
    torch.set_num_threads(threads)
    if case == 'layers':
        mixers, hidden = vim_s_layers(depth, chans // 2, length)
        run = lambda: run_layers(mixers, hidden, rows=False)  # noqa: E731
    else:
        ins, dt_raw, dt_bias = scan_inputs(chans, length)
        cls = (length - 1) // 2
        run = {
            'rows_ours': lambda: mamba_attention(None, None, internals={'f': ins}, direction='f', rows=[cls]),
            'rows_ref': lambda: reference_row(ins, dt_raw, dt_bias, cls),
            'full_ours': lambda: mamba_attention(None, None, internals={'f': ins}, direction='f'),
        }[case]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result_mb = out.numel() * 4 / 2 ** 20 if isinstance(out, torch.Tensor) else 0.0
    print(json.dumps(dict(peak_extra_mb=(after - before) / 1024, result_mb=result_mb)))


def peak_memory(case: str, chans: int, length: int, depth: int, threads: int) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), '--_child', case, '--_E', str(chans), '--_L', str(length),
           '--_depth', str(depth), '--threads', str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='small shapes (smoke run)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (the goal is stated for 2)')
    parser.add_argument('--out', default=RESULTS, help='JSON output path')
    parser.add_argument('--_child', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--_E', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--_L', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--_depth', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._child:
        child(args._child, args._E, args._L, args._depth, args.threads)
        return 0

    chans, lengths, depth, d_model = (64, (37, 65), 4, 32) if args.quick else (768, (197, 785), 24, 384)
    load = os.getloadavg()
    print(f'bench_attention: E={chans} N=16 K={TAPS}, L={lengths}, threads={args.threads}, '
          f'load average {load[0]:.2f} (shared machine: compare ratios, not absolute times)', flush=True)
    rows, fulls = [], []
    for length in lengths:
        rows.append(bench_rows(chans, length, repeat=3))
        rows[-1].update(mem_ours=peak_memory('rows_ours', chans, length, 0, args.threads),
                        mem_ref=peak_memory('rows_ref', chans, length, 0, args.threads))
        print(f"  (a) rows L={length}: ref {rows[-1]['ref_wall_s']:.3f}s, ours {rows[-1]['ours_wall_s']:.4f}s, "
              f"x{rows[-1]['speedup']:.0f}", flush=True)
    for length in lengths:
        loop_rows = [length // 8, length // 4] if not args.quick else [length // 4, length // 2]
        fulls.append(bench_full(chans, length, repeat=1 if length > 400 else 2, loop_rows=loop_rows,
                                probe_chans=min(16, chans)))
        fulls[-1].update(mem_ours=peak_memory('full_ours', chans, length, 0, args.threads))
        print(f"  (b) full L={length}: ours {fulls[-1]['ours_wall_s']:.2f}s, naive (extrapolated) "
              f"{fulls[-1]['naive_total_extrapolated_s']:.0f}s", flush=True)
    layers = bench_layers(depth, d_model, lengths[0])
    layers.update(mem=peak_memory('layers', 2 * d_model, lengths[0], depth, args.threads))
    goals = dict(rows_speedup_ge_20=all(r['speedup'] >= 20 for r in rows),
                 layers_full_lt_10s=layers['full_wall_s'] < 10.0,
                 layers_peak_extra_lt_2gb=layers['mem']['peak_extra_mb'] < 2048)

    print('\n| case | E | L | reference (s) | ours wall (s) | ours CPU (s) | speed-up | peak extra MB (ours / ref) '
          '| max rel diff |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| (a) class-token row, 1 dir | {r['E']} | {r['L']} | {r['ref_wall_s']:.3f} | {r['ours_wall_s']:.4f} "
              f"| {r['ours_cpu_s']:.4f} | {r['speedup']:.0f}x | {r['mem_ours']['peak_extra_mb']:.0f} / "
              f"{r['mem_ref']['peak_extra_mb']:.0f} | {r['max_rel_diff']:.1e} |")
    for f in fulls:
        print(f"| (b) full matrices, 1 dir | {f['E']} | {f['L']} | {f['naive_total_extrapolated_s']:.0f} "
              f"(extrapolated) | {f['ours_wall_s']:.2f} | {f['ours_cpu_s']:.2f} | {f['speedup']:.0f}x | "
              f"{f['mem_ours']['peak_extra_mb']:.0f} (output {f['output_mb']:.0f}) / - | "
              f"{f['loop_row_max_rel_diff']:.1e} |")
    print(f"| (d) {layers['depth']} layers, full bidirectional | {layers['E']} | {layers['L']} | - | "
          f"{layers['full_wall_s']:.2f} | {layers['full_cpu_s']:.2f} | - | "
          f"{layers['mem']['peak_extra_mb']:.0f} / - | - |")
    print(f"| (d) {layers['depth']} layers, class-token rows | {layers['E']} | {layers['L']} | - | "
          f"{layers['rows_wall_s']:.3f} | {layers['rows_cpu_s']:.3f} | - | - | - |")
    print(f"\nnaive full-matrix times are extrapolated (rows {fulls[0]['naive_loop_rows_timed']}... of the triple "
          'loop, 16 channels of conv2Mat + dense products); every other figure is measured in this run.')
    print('goals:', ', '.join(f'{k}={v}' for k, v in goals.items()))
    atomic_save_json(args.out, dict(quick=args.quick, threads=args.threads, load_average=load,
                                    platform=platform.platform(), torch=torch.__version__, rows=rows, full=fulls,
                                    layers=layers, goals=goals))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
