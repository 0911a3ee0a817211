"""Class relevance maps -> seed label maps, and the per-image map cache.

:func:`compute_maps` runs a classifier's explanation (``vim_wsss.explain.relevance_maps``; ViM 'ours' and DeiT
'transformer_attr' by default) over a dataset and caches, per image, ONE compressed ``<name>.npz``:

* ``classes`` ``(K,)`` int64, the image's positive classes as VOC indices 1..20;
* ``maps`` ``(K, gh, gw)`` float16, per-class relevance at patch resolution, min-max normalised per class;
* ``rw`` ``(K, gh, gw)`` float16 (when an affinity walk is on), the maps walked with the patch affinity
  (:func:`vim_wsss.wsss.refine.random_walk`) and renormalised; independent of any threshold;
* ``size`` ``(2,)`` int64, the original image (H, W).

Thresholding is cheap and happens later (:func:`seeds_from_maps`, sweeps, pseudo-masks), so one cache serves every
threshold. The cache folder holds ``maps_meta.json`` with the parameters that produced it; resuming with other
parameters is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'seeds_from_maps', 'save_map_file', 'load_map_file', 'map_path', 'upsample_maps', 'normalize_maps',
    'compute_maps', 'default_method', 'MapsResult',
]

PathLike = Union[str, os.PathLike]
META_FILE = 'maps_meta.json'
NO_LABEL_FILE = 'no_label.txt'  # names skipped for having no positive label


# ----------------------------------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------------------------------
def seeds_from_maps(maps: Union[np.ndarray, torch.Tensor], classes: Union[np.ndarray, Sequence[int]],
                    bg_threshold: float, high: Optional[float] = None, low: Optional[float] = None) -> np.ndarray:
    """Seed labels from per-class maps.

    Without a band: pixels whose largest map value is ``<= bg_threshold`` are background (0), the others take the
    class of the largest map. With ``high`` and ``low`` (both, ``low <= high``; ``bg_threshold`` is then unused, as
    ToCo's ``cam_to_label`` with ``ignore_mid``): ``max <= low`` -> 0, ``low < max <= high`` -> 255 (ignore),
    ``max > high`` -> argmax class.

    Args:
        maps: ``(K, h, w)`` in [0, 1], one map per present class.
        classes: ``(K,)`` VOC class indices 1..20 of the maps.
        bg_threshold: background score.
        high, low: optional ignore band.

    Returns:
        ``(h, w)`` uint8 labels in 0..20 or 255.
    """
    maps = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float32)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if maps.ndim != 3 or maps.shape[0] != classes.shape[0]:
        raise ValueError(f'maps must be (K, h, w) with K = len(classes) = {classes.shape[0]}, got {maps.shape}')
    if classes.size and (classes.min() < 1 or classes.max() > 20):
        raise ValueError(f'classes must be VOC foreground indices 1..20, got {classes.tolist()}')
    if (high is None) != (low is None):
        raise ValueError('give both high and low for an ignore band, or neither')
    if high is not None and low > high:
        raise ValueError(f'low ({low}) must be <= high ({high})')
    height, width = maps.shape[1:]
    if classes.size == 0:
        return np.zeros((height, width), dtype=np.uint8)
    best = maps.max(axis=0)
    labels = classes[maps.argmax(axis=0)].astype(np.uint8)
    if high is None:
        labels[best <= bg_threshold] = 0
    else:
        labels[best <= high] = 255
        labels[best <= low] = 0
    return labels


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max each map of ``(..., h, w)`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.float().flatten(-2)
    low = flat.min(dim=-1, keepdim=True).values
    high = flat.max(dim=-1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=eps)).reshape(maps.shape)


def upsample_maps(maps: Union[np.ndarray, torch.Tensor], size: Tuple[int, int], normalize: bool = True
                  ) -> torch.Tensor:
    """Patch-resolution maps ``(K, gh, gw)`` -> ``(K, H, W)`` fp32 (bilinear, then min-max per map)."""
    maps = torch.as_tensor(np.asarray(maps, dtype=np.float32)) if not isinstance(maps, torch.Tensor) else maps
    if maps.shape[0] == 0:
        return torch.zeros(0, *size)
    out = F.interpolate(maps.float()[None], size=tuple(int(s) for s in size), mode='bilinear',
                        align_corners=False)[0]
    return normalize_maps(out) if normalize else out


# ----------------------------------------------------------------------------------------------------------------
# cache files
# ----------------------------------------------------------------------------------------------------------------
def map_path(out_dir: PathLike, name: str) -> Path:
    """Path of the cache file of image ``name``."""
    return Path(out_dir) / f'{name}.npz'


def save_map_file(path: PathLike, classes: np.ndarray, maps: np.ndarray, size: Tuple[int, int],
                  rw: Optional[np.ndarray] = None) -> None:
    """Write one image's cache atomically (tmp file in the same folder + ``os.replace``).

    Raises:
        ValueError: a map holds NaN or inf (the message names the file).
    """
    path = Path(path)
    arrays: Dict[str, np.ndarray] = dict(classes=np.asarray(classes, np.int64), maps=np.asarray(maps, np.float32),
                                         size=np.asarray(size, np.int64))
    if rw is not None:
        arrays['rw'] = np.asarray(rw, np.float32)
    for key in ('maps', 'rw'):
        if key in arrays and not np.isfinite(arrays[key]).all():
            raise ValueError(f'non-finite values (NaN/inf) in the {key} of image {path.stem}; the classifier or '
                             'the explanation diverged for this image: check the checkpoint and the image file.')
        if key in arrays:
            arrays[key] = arrays[key].astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp.npz')
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_map_file(path: PathLike) -> Dict[str, np.ndarray]:
    """Read a cache file: dict with ``classes``, ``maps`` (fp32), ``size`` and, if present, ``rw`` (fp32).

    Raises:
        FileNotFoundError: no such file (run ``make-seeds`` first).
        ValueError: unreadable/corrupt file (delete it and resume ``make-seeds``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'seed cache {path} not found; run `vim-wsss make-seeds` for this image set first.')
    try:
        with np.load(path) as data:
            out = {key: data[key] for key in data.files}
    except Exception as err:  # zip / pickle errors of a truncated file
        raise ValueError(f'seed cache {path} is unreadable ({err}); delete it and re-run make-seeds to resume.'
                         ) from err
    for key in ('maps', 'rw'):
        if key in out:
            out[key] = out[key].astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------------------
# computing maps
# ----------------------------------------------------------------------------------------------------------------
def default_method(model: nn.Module) -> str:
    """'ours' for ViM, 'transformer_attr' for DeiT."""
    from vim_wsss.explain.attribution import model_family

    return 'ours' if model_family(model) == 'vim' else 'transformer_attr'


class MapsResult(dict):
    """Summary of a :func:`compute_maps` run: ``written``, ``skipped_done``, ``skipped_no_label``, ``total``,
    ``out_dir``, ``no_label`` (names)."""


def _check_meta(out_dir: Path, meta: Dict[str, Any]) -> None:
    path = out_dir / META_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ValueError(f'{out_dir} holds maps made with other parameters ({", ".join(diff)}); use another '
                             f'output folder or delete {path} and the .npz files to recompute.')
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(path, json.dumps(meta, indent=1, sort_keys=True))


def _maps_at(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str,
             start_layer: Optional[int], flip: bool) -> torch.Tensor:
    """Per-class maps at the model's patch grid ``(B, K, gh, gw)``, flip-averaged, min-max normalised."""
    from vim_wsss.explain import relevance_maps

    grid = tuple(model.grid_size)
    maps = relevance_maps(model, images, classes, method, start_layer=start_layer, out_size=grid)
    if flip:
        flipped = relevance_maps(model, images.flip(-1), classes, method, start_layer=start_layer, out_size=grid)
        maps = (maps + flipped.flip(-1)) / 2
    return maps


def _resize_images(images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode='bilinear', align_corners=False)


def multiscale_maps(models: Dict[float, nn.Module], images: torch.Tensor, classes: torch.Tensor, method: str,
                    start_layer: Optional[int] = None, flip: bool = False) -> torch.Tensor:
    """Maps averaged over scales (and flips) at the grid of the scale-1.0 model: ``(B, K, gh, gw)``, in [0, 1].

    Args:
        models: scale -> backbone built for input size ``scale * base size`` (same weights, see
            :func:`vim_wsss.wsss.train.load_classifier` with ``img_size``); must contain 1.0.
        images: ``(B, 3, H, W)`` normalised at the scale-1.0 model's input size.
        classes: ``(B, K)`` 0-based class indices.
        method, start_layer: see ``vim_wsss.explain.relevance_maps``.
        flip: also explain the horizontally flipped images.
    """
    base = models[1.0]
    grid = tuple(base.grid_size)
    total = None
    for scale, model in sorted(models.items()):
        size = tuple(model.patch_embed.img_size) if hasattr(model.patch_embed, 'img_size') else images.shape[-2:]
        maps = _maps_at(model, _resize_images(images, size), classes, method, start_layer, flip)
        if tuple(maps.shape[-2:]) != grid:
            maps = F.interpolate(maps, size=grid, mode='bilinear', align_corners=False)
        total = maps if total is None else total + maps
    return normalize_maps(total)


def compute_maps(model: nn.Module, dataset: Any, out_dir: PathLike, method: Optional[str] = None,
                 start_layer: Optional[int] = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                 scale_models: Optional[Dict[float, nn.Module]] = None, affinity_layers: Optional[Sequence[int]] = None,
                 rw: bool = True, rw_power: float = 2.0, rw_steps: int = 2, rw_radius: Optional[float] = None,
                 batch_size: int = 8, device: Union[str, torch.device] = 'cpu', progress: bool = True
                 ) -> MapsResult:
    """Compute and cache the class maps of every image of ``dataset`` (see the module docstring for the format).

    Resumable: images whose ``<name>.npz`` exists are skipped; every file is written atomically. Images without a
    positive label are skipped and counted.

    Args:
        model: backbone (ViM or DeiT) with a 20-class head, eval mode; its input size is the scale-1.0 size.
        dataset: an eval-mode ``VOCClsDataset`` (items: ``img`` ``(3, S, S)`` normalised, ``label`` ``(20,)``,
            ``name``, ``ori_shape`` (H, W)).
        out_dir: cache folder.
        method: relevance method (``vim_wsss.explain.METHODS``); default :func:`default_method`.
        start_layer: first layer of the method (None = its default).
        scales: input scales; scales other than 1.0 need ``scale_models``.
        flip: average with the horizontally flipped image.
        scale_models: scale -> model built at that input size (same weights).
        affinity_layers: blocks averaged into the patch affinity (None = the last third).
        rw: also store the random-walk-refined maps.
        rw_power, rw_steps, rw_radius: random-walk settings (:func:`vim_wsss.wsss.refine.random_walk`).
        batch_size: images per forward pass.
        device: where the model runs.
        progress: show a tqdm bar.

    Returns:
        :class:`MapsResult` with counts.
    """
    from tqdm import tqdm

    from vim_wsss.explain import patch_affinity
    from vim_wsss.wsss.refine import random_walk

    method = method or default_method(model)
    models = _scale_models(model, scales, scale_models)
    out_dir = Path(out_dir)
    meta = dict(method=method, start_layer=start_layer, scales=sorted(float(s) for s in scales), flip=bool(flip),
                affinity_layers=None if affinity_layers is None else [int(i) for i in affinity_layers],
                rw=bool(rw), rw_power=float(rw_power), rw_steps=int(rw_steps), rw_radius=rw_radius,
                grid=list(model.grid_size))
    _check_meta(out_dir, meta)
    result = MapsResult(written=0, skipped_done=0, skipped_no_label=0, total=len(dataset), out_dir=str(out_dir),
                        no_label=[])
    todo = _pending(dataset, out_dir, result)
    _write_text(out_dir / NO_LABEL_FILE, '\n'.join(result['no_label']))
    for m in models.values():
        m.to(device).eval()
    bar = tqdm(total=len(todo), desc=f'maps ({method})', disable=not progress, unit='img')
    for start in range(0, len(todo), batch_size):
        items = [dataset[i] for i in todo[start:start + batch_size]]
        images = torch.stack([torch.as_tensor(it['img']) for it in items]).float().to(device)
        present = [np.flatnonzero(np.asarray(it['label']) > 0) for it in items]
        width = max(len(p) for p in present)
        classes = torch.as_tensor(np.stack([np.resize(p, width) for p in present]), dtype=torch.long, device=device)
        maps = multiscale_maps(models, images, classes, method, start_layer, flip)
        walked = None
        if rw:
            affinity = patch_affinity(model, images, layers=affinity_layers)
            walked = normalize_maps(random_walk(maps, affinity, power=rw_power, steps=rw_steps,
                                                radius=rw_radius))
        for b, item in enumerate(items):
            k = len(present[b])
            save_map_file(map_path(out_dir, item['name']), present[b] + 1, maps[b, :k].cpu().numpy(),
                          tuple(int(s) for s in item['ori_shape']),
                          None if walked is None else walked[b, :k].cpu().numpy())
            result['written'] += 1
        bar.update(len(items))
    bar.close()
    return result


def _scale_models(model: nn.Module, scales: Sequence[float], scale_models: Optional[Dict[float, nn.Module]]
                  ) -> Dict[float, nn.Module]:
    models = {1.0: model}
    for scale in scales:
        scale = float(scale)
        if scale == 1.0:
            continue
        if not scale_models or scale not in scale_models:
            raise ValueError(f'scale {scale} needs a model built for that input size: pass scale_models={{{scale}: '
                             'load_classifier(cfg, ckpt, img_size=...)}} (make-seeds does this for you).')
        models[scale] = scale_models[scale]
    if 1.0 not in [float(s) for s in scales]:
        raise ValueError(f'scales {list(scales)} must include 1.0 (the grid the maps are stored at)')
    return models


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def _pending(dataset: Any, out_dir: Path, result: MapsResult) -> List[int]:
    """Indices still to compute; counts finished files and images without a positive label."""
    names = _names(dataset)
    labels = _labels(dataset)
    todo = []
    for i, name in enumerate(names):
        if not (np.asarray(labels[i]) > 0).any():
            result['skipped_no_label'] += 1
            result['no_label'].append(name)
        elif map_path(out_dir, name).is_file():
            result['skipped_done'] += 1
        else:
            todo.append(i)
    return todo


def _names(dataset: Any) -> List[str]:
    if hasattr(dataset, 'names'):
        return list(dataset.names)
    return [dataset[i]['name'] for i in range(len(dataset))]


def _labels(dataset: Any) -> List[np.ndarray]:
    if hasattr(dataset, 'labels') and hasattr(dataset, 'names'):
        labels = dataset.labels
        return [labels[n] for n in dataset.names] if isinstance(labels, dict) else list(labels)
    return [dataset[i]['label'] for i in range(len(dataset))]


def iter_map_files(out_dir: PathLike, names: Iterable[str]) -> Iterable[Tuple[str, Dict[str, np.ndarray]]]:
    """Yield ``(name, cache)`` for the given names (missing files raise FileNotFoundError)."""
    for name in names:
        yield name, load_map_file(map_path(out_dir, name))
