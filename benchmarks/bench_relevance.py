"""Relevance-map cost per class map: what one class map of one image costs end to end, at ViM-S / DeiT-S shapes.

Every method that seeds WSSS is timed through ``relevance_maps`` (forward with the explanation internals, the class
gradients, the method's maths, upsampling) on randomly initialised ViM-S and DeiT-S with a 20-class head, 224 px
(L=197), with K target classes per image (the full-matrix methods build each image's matrices once for all its
classes). ViM ``'ours'`` uses the class-token rows of every layer from 15; ViM ``'transformer_attr'`` needs every
layer's full bidirectional implicit attention, timed with the compiled CPU kernel (``impl='numba'``, the default) and
the torch reference path (``impl='torch'``, full matrices chunked over channels); DeiT ``'transformer_attr'`` is
Chefer's rollout. Rows are run at 1 and 2 threads; the ratios (per class map, against DeiT-S ``transformer_attr`` of
the same run; the issue-16 goal is ViM ``transformer_attr`` <= 10x) are taken in the same run. Each map is checked
finite and non-negative, and the two ViM ``transformer_attr`` paths are compared.

Usage::

    python benchmarks/bench_relevance.py            # ViM-S / DeiT-S at 224 (a few minutes on 2 CPU cores)
    python benchmarks/bench_relevance.py --quick    # tiny models (seconds)

Writes ``benchmarks/results/bench_relevance.json`` (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Dict, List

import torch

from vim_wsss.explain import relevance_maps
from vim_wsss.models import create_model
from vim_wsss.utils import atomic_save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'bench_relevance.json')
#: (family, method, impl, timed repeats): the torch reference is slow, so it is timed once.
CASES = (('deit', 'transformer_attr', 'auto', 5), ('vim', 'ours', 'auto', 5), ('vim', 'transformer_attr', 'numba', 5),
         ('vim', 'transformer_attr', 'torch', 1))


def checked_maps(model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str,
                 impl: str) -> torch.Tensor:
    """One warm-up call (it also compiles the numba kernels); its maps must be finite and non-negative."""
    maps = relevance_maps(model, images, classes, method, impl=impl, normalize=False)
    if not (torch.isfinite(maps).all() and maps.min() >= 0):
        raise RuntimeError(f'{method}: maps are not finite and non-negative')
    return maps


def run(models: Dict[str, torch.nn.Module], names: Dict[str, str], images: torch.Tensor, classes: int,
        threads: int) -> List[Dict[str, Any]]:
    """Every case of :data:`CASES` timed in interleaved rounds (a slow phase of a shared machine hits all cases
    alike), each keeping its fastest call."""
    torch.set_num_threads(threads)
    targets = (torch.arange(images.shape[0] * classes).view(images.shape[0], classes) * 7) % 20
    maps = [checked_maps(models[family], images, targets, method, impl) for family, method, impl, _ in CASES]
    walls = [[] for _ in CASES]
    for round_ in range(max(case[3] for case in CASES)):
        for idx, (family, method, impl, repeat) in enumerate(CASES):
            if round_ < repeat:
                wall = time.perf_counter()
                relevance_maps(models[family], images, targets, method, impl=impl, normalize=False)
                walls[idx].append(time.perf_counter() - wall)
    rows = []
    for (family, method, impl, _), case_walls in zip(CASES, walls):
        rows.append(dict(family=family, model=names[family], threads=threads, classes_per_image=classes,
                         method=method, impl=impl, maps=targets.numel(),
                         wall_s_per_class_map=min(case_walls) / targets.numel()))
        print(f"  {threads} thread(s), {classes} class(es): {family} {method} [{impl}] "
              f"{rows[-1]['wall_s_per_class_map']:.3f} s / class map", flush=True)
    deit = rows[0]['wall_s_per_class_map']
    numba_maps, torch_maps = maps[2], maps[3]
    diff = float((numba_maps - torch_maps).abs().max() / torch_maps.abs().max().clamp_min(1e-30))
    for row in rows:
        row['ratio_vs_deit'] = row['wall_s_per_class_map'] / deit
    rows[2]['max_rel_diff_vs_torch'] = diff
    rows[2]['speedup_vs_torch'] = rows[3]['wall_s_per_class_map'] / rows[2]['wall_s_per_class_map']
    return rows


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny models (smoke run)')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='torch CPU thread counts')
    parser.add_argument('--classes', type=int, nargs='+', default=[1, 3], help='target classes per image')
    parser.add_argument('--batch', type=int, default=1, help='images per call')
    parser.add_argument('--out', default=RESULTS, help='JSON output path')
    args = parser.parse_args(argv)
    names = (dict(vim='vim_test_patch8_64', deit='deit_test_patch8_64') if args.quick else
             dict(vim='vim_small_patch16_224', deit='deit_s_patch16_224'))
    size = 64 if args.quick else 224
    load = os.getloadavg()
    print(f'bench_relevance: {names}, {size} px, batch {args.batch}, load average {load[0]:.2f}', flush=True)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, size, size)
    models = {family: create_model(name, num_classes=20).eval() for family, name in names.items()}
    results = [row for threads in args.threads for classes in args.classes
               for row in run(models, names, images, classes, threads)]
    print('\n| threads | classes / image | model | method | impl | s / class map | vs DeiT-S transformer_attr |')
    print('|---|---|---|---|---|---|---|')
    for r in results:
        print(f"| {r['threads']} | {r['classes_per_image']} | {r['model']} | {r['method']} | {r['impl']} | "
              f"{r['wall_s_per_class_map']:.3f} | {r['ratio_vs_deit']:.1f}x |")
    for r in results:
        if 'speedup_vs_torch' in r:
            print(f"{r['threads']} thread(s), {r['classes_per_image']} class(es): ViM transformer_attr numba vs torch "
                  f"{r['speedup_vs_torch']:.1f}x faster, max relative difference {r['max_rel_diff_vs_torch']:.1e}")
    atomic_save_json(args.out, dict(quick=args.quick, batch=args.batch, size=size, load_average=load,
                                    platform=platform.platform(), torch=torch.__version__, results=results))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
