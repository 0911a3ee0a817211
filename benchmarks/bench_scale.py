"""Scale benchmark: per-stage throughput at VOC sizes and the projected wall time of the real VOC pipeline.

A few synthetic images in the VOC layout at VOC sizes (generated at 500 px, cut to 500x375 / 375x500 as
``tests/test_voc_real_shape.py`` does) go through the stage functions themselves, with random-weight ViM-S and
DeiT-S at 448 (L = 785; speed does not depend on the weights):

* backbone: forward (no grad) and a training step (forward + backward + AdamW) of one image;
* maps (``compute_maps``): ViM-S 'ours', DeiT-S 'transformer_attr' (the VOC config's methods), without the random
  walk; the random walk's ``patch_affinity`` (+ walk) timed on its own and added for "with rw";
* pseudo (``make_pseudo``): rw + PAR and rw + PAR + CRF on the VOC-size images (one process).

The projection multiplies those per-image times by the real split sizes (10,582 train_aug, 1,464 train, 1,449
val) and the VOC configs' schedules (classifier 20k iterations x batch 4, segmentation 20k x batch 8, twice: on
pseudo-masks and on GT; its cost taken as the backbone's training step, the SegFormer head left out), for one
process on this machine; sharded stages divide by the number of ranks. On CUDA it measures there.

Usage::

    python benchmarks/bench_scale.py                 # 2 images (about 4-5 minutes on 2 CPU cores)
    python benchmarks/bench_scale.py --images 4 --affinity-images 2

Writes ``benchmarks/results/bench_scale.json`` (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

from vim_wsss.models import create_model
from vim_wsss.utils import atomic_save_json

RESULTS = Path(__file__).resolve().parent / 'results' / 'bench_scale.json'
VOC_SHAPES = [(375, 500), (500, 375)]  # (H, W)
SPLITS = dict(train_aug=10582, train=1464, val=1449)
BACKBONES = dict(vim=('vim_small_patch16_224', 'ours'), deit=('deit_s_patch16_224', 'transformer_attr'))
CLS_IMAGES = 20000 * 4   # configs/cls/*-s_voc12aug-448.py: 20k iterations at batch 4
SEG_IMAGES = 20000 * 8   # configs/seg/segformer_*-s_1xb8-20k_voc12aug-448*.py: 20k iterations at batch 8


def seconds(fn: Callable[[], Any], device: str) -> float:
    start = time.perf_counter()
    fn()
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def voc_sized_set(folder: Path, count: int) -> Path:
    """A synthetic VOC-layout set whose ``bench`` split holds ``count`` images at VOC sizes (labels from masks)."""
    import cv2

    from vim_wsss.data.synthetic import make_synthetic
    from vim_wsss.data.voc import read_mask, read_split, save_mask

    root = make_synthetic(folder / 'VOC2012', seed=3, num_train=count, num_val=1, size=500, train_fraction=0.5)
    names = read_split(root, 'train_aug')[:count]
    for i, name in enumerate(names):
        h, w = VOC_SHAPES[i % len(VOC_SHAPES)]
        image = cv2.imread(str(root / 'JPEGImages' / f'{name}.jpg'))
        cv2.imwrite(str(root / 'JPEGImages' / f'{name}.jpg'), image[:h, :w], [cv2.IMWRITE_JPEG_QUALITY, 90])
        for sub in ('SegmentationClass', 'SegmentationClassAug'):
            if (root / sub / f'{name}.png').is_file():
                save_mask(root / sub / f'{name}.png', read_mask(root / sub / f'{name}.png')[:h, :w])
    (root / 'cls_labels_onehot.npy').unlink()  # the crops change which classes are present
    (root / 'ImageSets' / 'Segmentation' / 'bench.txt').write_text('\n'.join(names) + '\n')
    return root


def backbone_times(model: torch.nn.Module, device: str) -> Dict[str, float]:
    """Seconds per image: forward (no grad) and one training step (BCE + AdamW), batch 1 at 448."""
    x = torch.randn(1, 3, 448, 448, device=device)
    target = torch.zeros(1, 20, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x), target).backward()
        optimizer.step()

    return dict(forward_s=seconds(forward, device), train_step_s=seconds(step, device))


def maps_times(model: torch.nn.Module, method: str, root: Path, work: Path, count: int, affinity_count: int,
               device: str) -> Dict[str, float]:
    """Seconds per image of the maps stage without the random walk, and of the affinity + walk on its own."""
    from vim_wsss.data.datasets import VOCClsDataset
    from vim_wsss.explain import patch_affinity
    from vim_wsss.wsss.refine import random_walk
    from vim_wsss.wsss.seeds import compute_maps

    dataset = VOCClsDataset(root, 'bench', transform=dict(kind='eval', size=448))
    out = work / f'maps_{method}_{model.__class__.__name__}'
    maps_s = seconds(lambda: compute_maps(model, dataset, out, method=method, rw=False, batch_size=1, device=device,
                                          progress=False), device) / count
    images = torch.stack([torch.as_tensor(dataset[i]['img']) for i in range(affinity_count)]).float().to(device)
    probs = torch.rand(1, 2, *model.grid_size, device=device)

    def walk() -> None:
        for i in range(affinity_count):
            random_walk(probs, patch_affinity(model, images[i:i + 1]), power=2.0, steps=2)

    return dict(maps_s=maps_s, rw_s=seconds(walk, device) / affinity_count)


def pseudo_times(model: torch.nn.Module, method: str, root: Path, work: Path, count: int,
                 device: str) -> Dict[str, float]:
    """Seconds per image of make-pseudo (one process): rw + PAR, and rw + PAR + CRF, at VOC size."""
    from vim_wsss.data.datasets import VOCClsDataset
    from vim_wsss.data.voc import read_split
    from vim_wsss.wsss.pseudo import make_pseudo
    from vim_wsss.wsss.seeds import compute_maps

    dataset = VOCClsDataset(root, 'bench', transform=dict(kind='eval', size=448))
    maps = work / 'maps_rw'
    compute_maps(model, dataset, maps, method=method, rw=True, batch_size=1, device=device, progress=False)
    names = read_split(root, 'bench')
    out: Dict[str, float] = {}
    for key, chain in (('par_s', ['rw', 'par']), ('par_crf_s', ['rw', 'par', 'crf'])):
        out[key] = seconds(lambda: make_pseudo(maps, root / 'JPEGImages', names, work / key, 0.4, refine=chain,
                                               progress=False), 'cpu') / len(names)
    return out


def projection(rows: Dict[str, Dict[str, float]], pseudo: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """Hours of each pipeline stage per backbone on the real split sizes, one process (see the module docstring)."""
    hours = {}
    for name, t in rows.items():
        stages = dict(
            cls=CLS_IMAGES * t['train_step_s'],
            maps=SPLITS['train_aug'] * (t['maps_s'] + t['rw_s']),
            pseudo=SPLITS['train'] * pseudo['par_s'] + SPLITS['train_aug'] * pseudo['par_crf_s'],
            seg_and_seg_gt=2 * SEG_IMAGES * t['train_step_s'],
        )
        hours[name] = {k: v / 3600 for k, v in stages.items()}
        hours[name]['total'] = sum(hours[name].values())
    return hours


def table(rows: Dict[str, Dict[str, float]], pseudo: Dict[str, float], hours: Dict[str, Dict[str, float]],
          device: str) -> str:
    lines = [f'| stage ({device}, one process, 448 px) | ViM-S | DeiT-S |', '|---|---|---|']

    def row(label: str, values: List[float], unit: str = 'img/s') -> None:
        lines.append(f'| {label} | ' + ' | '.join(f'{v:.3g} {unit}' for v in values) + ' |')

    v, d = rows['vim'], rows['deit']
    row('backbone forward (no grad)', [1 / v['forward_s'], 1 / d['forward_s']])
    row('backbone training step (fwd + bwd + AdamW)', [1 / v['train_step_s'], 1 / d['train_step_s']])
    row("maps, no rw (ViM 'ours', DeiT 'transformer_attr')", [1 / v['maps_s'], 1 / d['maps_s']])
    row('maps with the random walk (affinity + walk added)',
        [1 / (v['maps_s'] + v['rw_s']), 1 / (d['maps_s'] + d['rw_s'])])
    lines.append(f"| make-pseudo rw + PAR, VOC size (backbone-independent) | {1 / pseudo['par_s']:.3g} img/s | |")
    lines.append(f"| make-pseudo rw + PAR + CRF, VOC size | {1 / pseudo['par_crf_s']:.3g} img/s | |")
    for stage in ('cls', 'maps', 'pseudo', 'seg_and_seg_gt', 'total'):
        lines.append(f"| projected {stage}, hours | {hours['vim'][stage]:.3g} h | {hours['deit'][stage]:.3g} h |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=2, help='images timed through maps and make-pseudo')
    parser.add_argument('--affinity-images', type=int, default=1, help='images timed through the affinity walk')
    args = parser.parse_args()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    rows, pseudo = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = voc_sized_set(work, args.images)
        for name, (model_name, method) in BACKBONES.items():
            model = create_model(model_name, img_size=448, num_classes=20).to(device)
            rows[name] = backbone_times(model.train(), device)
            model.eval()
            rows[name].update(maps_times(model, method, root, work, args.images, args.affinity_images, device))
            if name == 'deit':  # the pseudo stage reads maps only: the cheaper backbone makes them
                pseudo = pseudo_times(model, method, root, work, args.images, device)
            print(name, {k: round(v, 3) for k, v in rows[name].items()}, flush=True)
    hours = projection(rows, pseudo)
    print(table(rows, pseudo, hours, device))
    atomic_save_json(RESULTS, dict(torch=torch.__version__, cpu=platform.machine(), threads=torch.get_num_threads(),
                                   cores=os.cpu_count(), device=device,
                                   gpu=torch.cuda.get_device_name() if device == 'cuda' else None,
                                   images=args.images, affinity_images=args.affinity_images,
                                   seconds_per_image=rows, pseudo_seconds_per_image=pseudo,
                                   splits=SPLITS, cls_images=CLS_IMAGES, seg_images=SEG_IMAGES,
                                   projected_hours=hours))
    print(f'wrote {RESULTS}')


if __name__ == '__main__':
    main()
