"""Class relevance maps -> seed label maps, and the per-image map cache.

:func:`compute_maps` runs a classifier's explanation (``vim_wsss.explain.relevance_maps``; ViM 'ours' and DeiT
'transformer_attr' by default) over a dataset and caches, per image, ONE compressed ``<name>.npz``:

* ``classes`` ``(K,)`` int64, the image's positive classes as VOC indices 1..20;
* ``maps`` ``(K, gh, gw)`` float16, per-class relevance at patch resolution, min-max normalised per class;
* ``rw`` ``(K, gh, gw)`` float16 (when an affinity walk is on), the maps walked with the patch affinity
  (:func:`vim_wsss.wsss.refine.random_walk`) and renormalised; independent of any threshold;
* ``size`` ``(2,)`` int64, the original image (H, W).

The maps stay at patch resolution and are upsampled to the image size when read (:func:`upsample_maps`): at a 448
crop (28 x 28 patches) one image with K classes stores ``2 * K * 784 * 2`` bytes before compression (about 3 kB
for K = 1 with the random walk, 6 kB for K = 2), so the 10,582 ``train_aug`` images take tens of MB, not the
tens of GB full-resolution float maps would. The zip members carry a fixed timestamp, so the same maps give the
same bytes (runs and shards compare byte for byte).

Thresholding is cheap and happens later (:func:`seeds_from_maps`, sweeps, pseudo-masks), so one cache serves every
threshold. The cache folder holds ``maps_meta.json`` with the parameters (and checkpoint sha256) that produced it,
written before the first map; resuming with other parameters is refused unless ``overwrite`` restarts the folder.
A damaged file (0 bytes, truncated, NaN) is recomputed on resume; a lock keeps a second writer out
(:mod:`vim_wsss.wsss.resume`). :func:`make_seeds` is the whole stage (classifier + dataset + maps).

Under torchrun (:mod:`vim_wsss.dist`) each rank explains its shard of the images (``sorted(names)[rank::world]``)
on GPU ``LOCAL_RANK``; rank 0 writes ``maps_meta.json`` and ``no_label.txt`` before the others start, and the
counts are summed over the ranks at the closing barrier. Resume is per image, whatever the earlier world size.
A batch explains ``batch_size`` images x their present classes in one call; on CUDA two loader workers read the
next images ahead into pinned memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vim_wsss.data.voc import DataError
from vim_wsss.dist import current_group, gather_results, rank_device, shard, share_line

__all__ = [
    'seeds_from_maps', 'save_map_file', 'load_map_file', 'map_path', 'upsample_maps', 'normalize_maps',
    'compute_maps', 'make_seeds', 'default_method', 'check_method', 'check_scales', 'check_batch_size', 'check_logits',
    'verify_map_file', 'MapsResult',
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
        DataError: a map holds NaN or inf (the message names the image).
    """
    path = Path(path)
    arrays: Dict[str, np.ndarray] = dict(classes=np.asarray(classes, np.int64), maps=np.asarray(maps, np.float32),
                                         size=np.asarray(size, np.int64))
    if rw is not None:
        arrays['rw'] = np.asarray(rw, np.float32)
    for key in ('maps', 'rw'):
        if key in arrays and not np.isfinite(arrays[key]).all():
            raise DataError(f'non-finite values (NaN/inf) in the {key} of image {path.stem}; the classifier or '
                            'the explanation diverged for this image: check the checkpoint and the image file.')
        if key in arrays:
            arrays[key] = arrays[key].astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp.npz')
    try:
        _save_npz(tmp, arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with a fixed member timestamp (numpy stamps the write time), readable by ``np.load``."""
    import zipfile

    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, 'w', force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)


def load_map_file(path: PathLike) -> Dict[str, np.ndarray]:
    """Read a cache file: dict with ``classes``, ``maps`` (fp32), ``size`` and, if present, ``rw`` (fp32).

    Raises:
        FileNotFoundError: no such file (run ``make-seeds`` first).
        DataError: unreadable/corrupt file, or maps holding NaN/inf (re-run ``make-seeds``: it redoes the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'seed cache {path} not found; run `vim-wsss make-seeds` for this image set first.')
    try:
        with np.load(path) as data:
            out = {key: data[key] for key in data.files}
    except Exception as err:  # zip / pickle errors of a truncated file
        raise DataError(f'seed cache {path} is unreadable ({err}); re-run make-seeds into the same --out: it '
                        'recomputes damaged files.') from err
    for key in ('maps', 'rw'):
        if key in out:
            out[key] = out[key].astype(np.float32)
            if not np.isfinite(out[key]).all():
                raise DataError(f'seed cache {path} holds non-finite {key} (NaN/inf); the classifier that made it '
                                'diverged: re-run make-seeds with a working checkpoint (--overwrite).')
    return out


# ----------------------------------------------------------------------------------------------------------------
# computing maps
# ----------------------------------------------------------------------------------------------------------------
def default_method(model: nn.Module) -> str:
    """'ours' for ViM, 'transformer_attr' for DeiT."""
    from vim_wsss.explain.attribution import model_family

    return 'ours' if model_family(model) == 'vim' else 'transformer_attr'


class MapsResult(dict):
    """Summary of a :func:`compute_maps` run: ``written``, ``skipped_done``, ``redone`` (outputs found corrupt and
    recomputed), ``skipped_no_label``, ``total``, ``out_dir``, ``no_label`` (names), ``skipped_bad`` (unreadable
    images dropped by ``skip_bad``), ``rank``, ``world``; under torchrun the counts are the sums over the ranks and
    ``shares`` lists each rank's number of images."""


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


def check_method(model: nn.Module, method: Optional[str]) -> str:
    """The method to run (``default_method`` when None); DataError naming the choices for an unknown one."""
    from vim_wsss.explain.attribution import METHODS, model_family

    family = model_family(model)
    method = method or default_method(model)
    if method not in METHODS[family]:
        raise DataError(f'unknown --method {method!r} for a {family} classifier; choose one of '
                        f'{sorted(METHODS[family])}.')
    return method


def check_scales(scales: Sequence[float]) -> List[float]:
    """Sorted unique scales; DataError unless all are finite, > 0, and 1.0 (the stored grid) is among them."""
    values = sorted({float(s) for s in scales})
    if not values or any(not np.isfinite(s) or s <= 0 for s in values):
        raise DataError(f'--scales {list(scales)}: every scale must be a finite number > 0 (e.g. --scales 1.0 1.5).')
    if 1.0 not in values:
        raise DataError(f'--scales {list(scales)} must include 1.0 (the grid the maps are stored at), '
                        f'e.g. --scales 1.0 {" ".join(str(s) for s in values)}.')
    return values


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int >= 1 (DataError otherwise)."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f'--batch-size {batch_size}: must be a whole number >= 1 (images per forward pass).')
    return int(batch_size)


def check_logits(model: nn.Module, images: torch.Tensor, names: Sequence[str]) -> None:
    """DataError naming the images whose logits ``model(images)`` are NaN/inf (and the non-finite weights).

    Without this a diverged classifier gives finite, all-zero maps (the explanations clamp and normalise).
    """
    with torch.no_grad():
        logits = model(images)
    bad = [names[i] for i in torch.nonzero(~torch.isfinite(logits).all(dim=1)).flatten().tolist()]
    if bad:
        weights = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        detail = f'non-finite weights: {", ".join(weights[:5])}' if weights else 'the weights are finite'
        raise DataError(f'the classifier gives non-finite logits (NaN/inf) for image {", ".join(bad)} ({detail}); '
                        'the checkpoint is broken or training diverged: use an earlier checkpoint or retrain.')


def compute_maps(model: nn.Module, dataset: Any, out_dir: PathLike, method: Optional[str] = None,
                 start_layer: Optional[int] = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                 scale_models: Optional[Dict[float, nn.Module]] = None, affinity_layers: Optional[Sequence[int]] = None,
                 rw: bool = True, rw_power: float = 2.0, rw_steps: int = 2, rw_radius: Optional[float] = None,
                 batch_size: int = 8, device: Union[str, torch.device] = 'cpu', progress: bool = True,
                 overwrite: bool = False, record: Optional[Dict[str, Any]] = None) -> MapsResult:
    """Compute and cache the class maps of every image of ``dataset`` (see the module docstring for the format).

    Resumable and honest: the folder is locked against a second writer, leftovers of a killed run are removed,
    ``maps_meta.json`` (written first) records the parameters and a re-run with others is refused (or, with
    ``overwrite``, restarts); existing ``<name>.npz`` count as done only when they read back complete and finite.
    Every file is written atomically. Images without a positive label are skipped and counted. Under torchrun
    each rank explains its shard and rank 0 writes the shared files first (module docstring).

    Args:
        model: backbone (ViM or DeiT) with a 20-class head, eval mode; its input size is the scale-1.0 size.
        dataset: an eval-mode ``VOCClsDataset`` (items: ``img`` ``(3, S, S)`` normalised, ``label`` ``(20,)``,
            ``name``, ``ori_shape`` (H, W)).
        out_dir: cache folder.
        method: relevance method (``vim_wsss.explain.METHODS``); default :func:`default_method`.
        start_layer: first layer of the method (None = its default).
        scales: input scales; scales other than 1.0 need ``scale_models`` (:func:`make_seeds` builds them).
        flip: average with the horizontally flipped image.
        scale_models: scale -> model built at that input size (same weights).
        affinity_layers: blocks averaged into the patch affinity (None = the last third).
        rw: also store the random-walk-refined maps.
        rw_power, rw_steps, rw_radius: random-walk settings (:func:`vim_wsss.wsss.refine.random_walk`).
        batch_size: images per forward pass (>= 1).
        device: where the model runs (``'cuda'`` is GPU ``LOCAL_RANK`` under torchrun).
        progress: show a tqdm bar (under torchrun with the rank's share: 'rank 1/3: 4 of 11 images').
        overwrite: delete maps made with other parameters instead of refusing.
        record: more entries for ``maps_meta.json`` (e.g. the checkpoint's sha256).

    Returns:
        :class:`MapsResult` with counts.

    Raises:
        DataError: bad parameters, a folder made with other parameters or locked by another run, non-finite
            logits or maps (naming the image).
    """
    from vim_wsss.wsss.resume import open_shared_output

    method = check_method(model, method)
    batch_size = check_batch_size(batch_size)
    models = _scale_models(model, check_scales(scales), scale_models)
    out_dir = Path(out_dir)
    meta = dict(method=method, start_layer=start_layer, scales=sorted(models), flip=bool(flip),
                affinity_layers=None if affinity_layers is None else [int(i) for i in affinity_layers],
                rw=bool(rw), rw_power=float(rw_power), rw_steps=int(rw_steps), rw_radius=rw_radius,
                grid=list(model.grid_size), **(record or {}))
    group = current_group()
    device = rank_device(device, group)
    names, labels = _names(dataset), _labels(dataset)
    no_label = [n for n, label in zip(names, labels) if not (np.asarray(label) > 0).any()]
    result = MapsResult(written=0, skipped_done=0, redone=0, skipped_no_label=len(no_label), total=len(dataset),
                        out_dir=str(out_dir), no_label=no_label, skipped_bad=list(getattr(dataset, 'skipped', [])),
                        rank=group.rank, world=group.world)
    mine = shard(range(len(names)), group, key=lambda i: names[i])
    skip = set(no_label)
    labelled = [i for i in mine if names[i] not in skip]

    def run_shard() -> Dict[str, int]:
        counts = dict(written=0, skipped_done=0, redone=0, share=len(mine))
        todo = _pending(names, labelled, out_dir, counts, meta)
        for m in models.values():
            m.to(device).eval()
        desc = ' '.join(filter(None, [f"maps ({meta['method']})", share_line(group, len(mine), len(names))]))
        _run_batches(models, dataset, todo, out_dir, counts, meta, batch_size, device, progress, desc)
        return counts

    with open_shared_output(group, out_dir, 'make-seeds', META_FILE, meta, lambda: _outputs(out_dir), overwrite,
                            setup=lambda: _write_text(out_dir / NO_LABEL_FILE, '\n'.join(no_label))):
        shares = gather_results(run_shard, group)
    for key in ('written', 'skipped_done', 'redone'):
        result[key] = sum(s[key] for s in shares)
    if group.sharded:
        result['shares'] = [s['share'] for s in shares]
    return result


def _outputs(out_dir: Path) -> List[Path]:
    return sorted(out_dir.glob('*.npz')) + [p for p in [out_dir / NO_LABEL_FILE] if p.is_file()]


def _run_batches(models: Dict[float, nn.Module], dataset: Any, todo: List[int], out_dir: Path,
                 result: Dict[str, Any], meta: Dict[str, Any], batch_size: int, device: Union[str, torch.device],
                 progress: bool, desc: str) -> None:
    """Explain ``dataset[todo]`` batch by batch and write one cache file per image."""
    from tqdm import tqdm

    from vim_wsss.explain import patch_affinity
    from vim_wsss.wsss.refine import random_walk

    model = models[1.0]
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, unit='img')
    for images, items in _batches(dataset, todo, batch_size, device):
        check_logits(model, images, [it['name'] for it in items])
        present = [np.flatnonzero(np.asarray(it['label']) > 0) for it in items]
        width = max(len(p) for p in present)
        classes = torch.as_tensor(np.stack([np.resize(p, width) for p in present]), dtype=torch.long, device=device)
        maps = multiscale_maps(models, images, classes, meta['method'], meta['start_layer'], meta['flip'])
        walked = None
        if meta['rw']:
            affinity = patch_affinity(model, images, layers=meta['affinity_layers'])
            walked = normalize_maps(random_walk(maps, affinity, power=meta['rw_power'], steps=meta['rw_steps'],
                                                radius=meta['rw_radius']))
        for b, item in enumerate(items):
            k = len(present[b])
            save_map_file(map_path(out_dir, item['name']), present[b] + 1, maps[b, :k].cpu().numpy(),
                          tuple(int(s) for s in item['ori_shape']),
                          None if walked is None else walked[b, :k].cpu().numpy())
            result['written'] += 1
        bar.update(len(items))
    bar.close()


def _collate(items: List[Dict[str, Any]]) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
    """Dataset items -> ``(images (B, 3, S, S) float, items)`` (module level: loader workers pickle it)."""
    return torch.stack([torch.as_tensor(it['img']) for it in items]).float(), items


def _batches(dataset: Any, todo: List[int], batch_size: int, device: Union[str, torch.device]
             ) -> Iterable[Tuple[torch.Tensor, List[Dict[str, Any]]]]:
    """``(images (B, 3, S, S) on device, items)`` over ``dataset[todo]`` in order; on CUDA two loader workers
    read ahead into pinned memory, elsewhere the images are read here, one batch at a time."""
    if torch.device(device).type != 'cuda':
        for start in range(0, len(todo), batch_size):
            images, items = _collate([dataset[i] for i in todo[start:start + batch_size]])
            yield images.to(device), items
        return
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, collate_fn=_collate, num_workers=2,
                        pin_memory=True)
    for images, items in loader:
        yield images.to(device, non_blocking=True), items


def _scale_models(model: nn.Module, scales: Sequence[float], scale_models: Optional[Dict[float, nn.Module]]
                  ) -> Dict[float, nn.Module]:
    models = {1.0: model}
    for scale in scales:
        scale = float(scale)
        if scale == 1.0:
            continue
        if not scale_models or scale not in scale_models:
            raise ValueError(f'scale {scale} needs a model built for that input size: pass scale_models={{{scale}: '
                             'load_classifier(cfg, ckpt, img_size=...)}}, or call make_seeds, which builds them.')
        models[scale] = scale_models[scale]
    return models


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def verify_map_file(path: Path, meta: Dict[str, Any]) -> bool:
    """True when a cache file reads back whole, finite, with ``K`` maps of the recorded grid (and ``rw`` if on)."""
    try:
        data = load_map_file(path)
    except (OSError, ValueError):
        return False
    grid = tuple(meta['grid'])
    shape = (len(np.asarray(data.get('classes', [])).reshape(-1)), *grid)
    keys = ('maps', 'rw') if meta['rw'] else ('maps',)
    return 'size' in data and all(key in data and data[key].shape == shape for key in keys)


def _pending(names: Sequence[str], indices: Sequence[int], out_dir: Path, result: Dict[str, Any],
             meta: Dict[str, Any]) -> List[int]:
    """Of ``indices`` (images with a positive label), those still to compute; counts finished (verified) files.

    A file that does not read back whole (0 bytes, truncated, NaN) is deleted and recomputed (``redone``).
    """
    todo = []
    for i in indices:
        path = map_path(out_dir, names[i])
        if path.is_file() and verify_map_file(path, meta):
            result['skipped_done'] += 1
        else:
            if path.is_file():
                path.unlink()
                result['redone'] += 1
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


def scaled_size(model: nn.Module, scale: float) -> int:
    """Input size for ``scale`` times the model's: rounded to a whole number of patches (at least one)."""
    base = int(model.patch_embed.img_size[0])
    patch = int(model.patch_embed.patch_size[0])
    return max(1, int(round(base * scale / patch))) * patch


def file_sha256(path: PathLike) -> str:
    """sha256 of a file (identifies the checkpoint a cache was made with)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def make_seeds(config: PathLike, checkpoint: PathLike, data_root: PathLike, split: str, out: PathLike,
               method: Optional[str] = None, start_layer: Optional[int] = None, scales: Sequence[float] = (1.0,),
               flip: bool = False, rw: bool = True, batch_size: int = 8, device: Union[str, torch.device] = 'cpu',
               skip_bad: bool = False, overwrite: bool = False, trust: Optional[bool] = None,
               progress: bool = True) -> MapsResult:
    """The make-seeds stage (``vim-wsss make-seeds`` and the pipeline): load a classifier, cache its maps.

    Builds one model per scale from the same checkpoint (``load_classifier(..., img_size=scaled_size)``), an eval
    ``VOCClsDataset`` of ``split`` at the scale-1.0 input size, and runs :func:`compute_maps`; the checkpoint's
    sha256 is part of ``maps_meta.json``, so maps of another checkpoint are never mixed into ``out``.

    Args:
        config, checkpoint: classifier config and checkpoint (``train-cls`` outputs).
        data_root, split: VOC root and the images to explain.
        out: cache folder.
        method, start_layer, scales, flip, rw, batch_size, device, overwrite, progress: see :func:`compute_maps`.
        skip_bad: drop unreadable images (listed in ``skipped_bad``) instead of stopping.
        trust: passed to ``load_classifier`` when given (checkpoint trust policy).

    Returns:
        :class:`MapsResult`.
    """
    from vim_wsss.data.datasets import VOCClsDataset
    from vim_wsss.wsss.train import load_classifier

    batch_size = check_batch_size(batch_size)
    scales = check_scales(scales)
    device = rank_device(device, current_group())
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'checkpoint {checkpoint} not found; pass the best_*.pth that train-cls wrote.')
    load = dict(device=device, **({} if trust is None else {'trust': trust}))
    model = load_classifier(config, checkpoint, **load)
    method = check_method(model, method)
    scale_models = {s: load_classifier(config, checkpoint, img_size=scaled_size(model, s), **load)
                    for s in scales if s != 1.0}
    dataset = VOCClsDataset(data_root, split, transform=dict(kind='eval', size=model.patch_embed.img_size[0]),
                            skip_bad=skip_bad)
    return compute_maps(model, dataset, out, method=method, start_layer=start_layer, scales=scales, flip=flip,
                        scale_models=scale_models, rw=rw, batch_size=batch_size, device=device, progress=progress,
                        overwrite=overwrite, record={'checkpoint_sha256': file_sha256(checkpoint)})


def iter_map_files(out_dir: PathLike, names: Iterable[str]) -> Iterable[Tuple[str, Dict[str, np.ndarray]]]:
    """Yield ``(name, cache)`` for the given names (missing files raise FileNotFoundError)."""
    for name in names:
        yield name, load_map_file(map_path(out_dir, name))
