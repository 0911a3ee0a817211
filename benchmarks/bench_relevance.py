"""Relevance-map cost per method: what one class map of one image costs end to end, at ViM-S / DeiT-S shapes.

Every method of ``vim_wsss.explain.METHODS`` that seeds WSSS is timed through ``relevance_maps`` (forward with the
explanation internals, the class gradients, the method's maths, upsampling) on randomly initialised ViM-S and
DeiT-S with a 20-class head, 224 px (L=197), one class per image. ViM ``'ours'`` uses the class-token rows of every
layer from 15; ViM ``'transformer_attr'`` builds all 24 layers' full bidirectional matrices (chunked over channels);
DeiT ``'transformer_attr'`` is Chefer's rollout. Ratios are against ViM ``'ours'`` measured in the same run, and each
map is checked finite and non-negative.

Usage::

    python benchmarks/bench_relevance.py            # ViM-S / DeiT-S at 224 (about a minute on 2 CPU cores)
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
CASES = (('vim', 'ours'), ('vim', 'transformer_attr'), ('deit', 'transformer_attr'))


def bench_case(model: torch.nn.Module, images: torch.Tensor, method: str, repeat: int) -> Dict[str, Any]:
    classes = torch.arange(images.shape[0]).unsqueeze(1) % 20
    maps = relevance_maps(model, images, classes, method)  # warm-up
    if not (torch.isfinite(maps).all() and maps.min() >= 0):
        raise RuntimeError(f'{method}: maps are not finite and non-negative')
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        relevance_maps(model, images, classes, method)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    per = images.shape[0]
    return dict(method=method, batch=per, wall_s_per_image=min(walls) / per, cpu_s_per_image=min(cpus) / per)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny models (smoke run)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--batch', type=int, default=1, help='images per call')
    parser.add_argument('--out', default=RESULTS, help='JSON output path')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = (dict(vim='vim_test_patch8_64', deit='deit_test_patch8_64') if args.quick else
             dict(vim='vim_small_patch16_224', deit='deit_s_patch16_224'))
    size, repeat = (64, 3) if args.quick else (224, 2)
    load = os.getloadavg()
    print(f'bench_relevance: {names}, {size} px, batch {args.batch}, threads={args.threads}, '
          f'load average {load[0]:.2f}', flush=True)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, size, size)
    models = {family: create_model(name, num_classes=20).eval() for family, name in names.items()}
    results = []
    for family, method in CASES:
        results.append(dict(family=family, model=names[family], **bench_case(models[family], images, method, repeat)))
        print(f"  {family} {method}: {results[-1]['wall_s_per_image']:.3f} s/image", flush=True)
    base = results[0]['wall_s_per_image']
    print('\n| model | method | wall s / image | CPU s / image | vs ViM ours |')
    print('|---|---|---|---|---|')
    for r in results:
        r['ratio_vs_vim_ours'] = r['wall_s_per_image'] / base
        print(f"| {r['model']} | {r['method']} | {r['wall_s_per_image']:.3f} | {r['cpu_s_per_image']:.3f} | "
              f"{r['ratio_vs_vim_ours']:.1f}x |")
    atomic_save_json(args.out, dict(quick=args.quick, threads=args.threads, batch=args.batch, size=size,
                                    load_average=load, platform=platform.platform(), torch=torch.__version__,
                                    results=results))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
