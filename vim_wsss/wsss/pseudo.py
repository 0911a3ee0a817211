"""Pseudo-masks from cached class maps: threshold, refine (random walk / PAR / CRF), write palette PNGs.

Output: ``<out_dir>/<name>.png``, uint8 palette PNGs with 0..20 and 255 (ignore band), i.e. a folder mmseg's
``PascalVOCDataset`` reads directly as ``data_prefix=dict(seg_map_path=<out_dir>)``. The writer is resumable
(finished PNGs are skipped) and atomic (tmp file + ``os.replace``), so an interrupted run never leaves a truncated
mask, and it can spread images over worker processes.

Per image (:func:`pseudo_label`): the cached maps (``rw`` when the step list contains 'rw', else the raw ``maps``)
are upsampled to the image size and min-max normalised; a constant background channel ``t`` is prepended, the
scores are turned into probabilities ``∝ score^prob_power`` (argmax unchanged, so without pixel steps the result is
exactly :func:`~vim_wsss.wsss.seeds.seeds_from_maps`), the pixel steps ('par', 'crf') run in the given order and
the argmax is the label. With an ignore band the chain runs at ``t = high`` and ``t = low``: foreground of the high
pass is kept, pixels that only the low pass calls foreground become 255, the rest is background (ToCo's fusion).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .refine import PIXEL_STEPS, refine_probs, scores_to_probs
from .seeds import META_FILE, NO_LABEL_FILE, load_map_file, map_path, upsample_maps

__all__ = ['pseudo_label', 'make_pseudo', 'PseudoMaskWriter', 'check_steps', 'NO_LABEL_FILE']

PathLike = Union[str, os.PathLike]
STEPS = ('rw',) + PIXEL_STEPS


def check_steps(refine: Sequence[str]) -> Tuple[bool, List[str]]:
    """Validate a step list: returns (use the random-walk maps, pixel steps in order).

    'rw' works on the cached patch-level maps, so it must come first; 'par' and 'crf' may come in any order.
    """
    refine = list(refine)
    unknown = [s for s in refine if s not in STEPS]
    if unknown:
        raise ValueError(f'unknown refinement steps {unknown}; choose from {list(STEPS)}')
    use_rw = 'rw' in refine
    if use_rw and (refine.index('rw') != 0 or refine.count('rw') > 1):
        raise ValueError(f"'rw' propagates the patch-level maps and must be the first step (once), got {refine}")
    return use_rw, [s for s in refine if s != 'rw']


def _label_pass(image: np.ndarray, maps: torch.Tensor, classes: np.ndarray, threshold: float,
                steps: Sequence[str], prob_power: float, par_kwargs: Optional[dict], crf_kwargs: Optional[dict],
                par_scale: float) -> np.ndarray:
    background = torch.full((1, *maps.shape[1:]), float(threshold))
    scores = torch.cat([background, maps], dim=0)
    if steps:
        scores = refine_probs(image, scores_to_probs(scores, prob_power), steps, par_kwargs=par_kwargs,
                              crf_kwargs=crf_kwargs, par_scale=par_scale)
    lookup = np.concatenate([[0], classes]).astype(np.uint8)
    return lookup[scores.argmax(dim=0).numpy()]


def pseudo_label(cache: Dict[str, np.ndarray], image: np.ndarray, bg_threshold: float, high: Optional[float] = None,
                 low: Optional[float] = None, refine: Sequence[str] = ('rw', 'par', 'crf'), prob_power: float = 1.0,
                 par_kwargs: Optional[dict] = None, crf_kwargs: Optional[dict] = None,
                 par_scale: float = 1.0) -> np.ndarray:
    """One image's pseudo-mask.

    Args:
        cache: a :func:`~vim_wsss.wsss.seeds.load_map_file` dict.
        image: uint8 ``(H, W, 3)``, H, W = ``cache['size']``.
        bg_threshold: background score (used when no band is given).
        high, low: optional ignore band (both or neither).
        refine: steps in order, from 'rw' (first if present), 'par', 'crf'.
        prob_power: sharpness of the probabilities fed to PAR/CRF.
        par_kwargs, crf_kwargs: options of :func:`~vim_wsss.wsss.refine.par_refine` / ``crf_refine``.
        par_scale: PAR resolution relative to the image.

    Returns:
        ``(H, W)`` uint8 labels 0..20 / 255.
    """
    use_rw, steps = check_steps(refine)
    if (high is None) != (low is None):
        raise ValueError('give both high and low for an ignore band, or neither')
    size = tuple(int(s) for s in cache['size'])
    if image.shape[:2] != size:
        raise ValueError(f'image is {image.shape[:2]} but the cached maps were made for {size}')
    classes = np.asarray(cache['classes'], dtype=np.int64)
    if classes.size == 0:
        return np.zeros(size, dtype=np.uint8)
    if use_rw and 'rw' not in cache:
        raise ValueError("refine starts with 'rw' but the seed cache has no random-walk maps; recompute the maps "
                         'with the affinity walk on (make-seeds --rw) or drop rw from the steps.')
    maps = upsample_maps(cache['rw' if use_rw else 'maps'], size)
    args = (steps, prob_power, par_kwargs, crf_kwargs, par_scale)
    if high is None:
        return _label_pass(image, maps, classes, bg_threshold, *args)
    if low > high:
        raise ValueError(f'low ({low}) must be <= high ({high})')
    strict = _label_pass(image, maps, classes, high, *args)
    loose = _label_pass(image, maps, classes, low, *args)
    out = strict.copy()
    out[(strict == 0) & (loose > 0)] = 255
    return out


class PseudoMaskWriter:
    """Resumable, atomic palette-PNG writer for one output folder.

    Args:
        out_dir: folder of ``<name>.png`` masks (created).
    """

    def __init__(self, out_dir: PathLike):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.out_dir / f'{name}.png'

    def done(self, name: str) -> bool:
        """True when the mask exists (atomic writes mean an existing file is complete)."""
        return self.path(name).is_file()

    def pending(self, names: Sequence[str]) -> List[str]:
        return [n for n in names if not self.done(n)]

    def write(self, name: str, mask: np.ndarray) -> Path:
        from vim_wsss.data.voc import save_mask

        return save_mask(self.path(name), mask)


def _no_label_names(seed_dir: Path) -> set:
    path = seed_dir / NO_LABEL_FILE
    return set(path.read_text().split()) if path.is_file() else set()


def _one(task: Tuple[str, Dict[str, Any]]) -> str:
    """Worker: compute and write one mask (module level so it pickles)."""
    from vim_wsss.data.voc import read_image

    name, opts = task
    writer = PseudoMaskWriter(opts['out_dir'])
    image = read_image(Path(opts['image_root']) / f"{name}{opts['image_suffix']}")
    cache_file = map_path(opts['seed_dir'], name)
    if not cache_file.is_file() and name in opts['no_label']:
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
    else:
        cache = load_map_file(cache_file)
        mask = pseudo_label(cache, image, opts['bg_threshold'], opts['high'], opts['low'], opts['refine'],
                            opts['prob_power'], opts['par_kwargs'], opts['crf_kwargs'], opts['par_scale'])
    writer.write(name, mask)
    return name


def _init_worker() -> None:
    torch.set_num_threads(1)


def make_pseudo(seed_dir: PathLike, image_root: PathLike, names: Sequence[str], out_dir: PathLike,
                bg_threshold: float, high: Optional[float] = None, low: Optional[float] = None,
                refine: Sequence[str] = ('rw', 'par', 'crf'), prob_power: float = 1.0,
                par_kwargs: Optional[dict] = None, crf_kwargs: Optional[dict] = None, par_scale: float = 1.0,
                workers: int = 0, image_suffix: str = '.jpg', progress: bool = True) -> Dict[str, Any]:
    """Write pseudo-masks for ``names`` into ``out_dir`` (see the module docstring).

    Args:
        seed_dir: cache folder of :func:`~vim_wsss.wsss.seeds.compute_maps`.
        image_root: folder with ``<name><image_suffix>`` images (VOC ``JPEGImages``).
        names: images to label; names the maps stage skipped for having no positive label get all-background masks.
        out_dir: output folder.
        bg_threshold, high, low, refine, prob_power, par_kwargs, crf_kwargs, par_scale: see :func:`pseudo_label`.
        workers: processes (0 or 1 = in this process).
        image_suffix: image file extension.
        progress: tqdm bar.

    Returns:
        dict with ``written``, ``skipped_done``, ``total``, ``out_dir`` (also saved as ``pseudo_meta.json``).
    """
    from tqdm import tqdm

    from vim_wsss.utils import atomic_save_json

    check_steps(refine)
    seed_dir = Path(seed_dir)
    if not (seed_dir / META_FILE).is_file():
        raise FileNotFoundError(f'{seed_dir} is not a seed cache (no {META_FILE}); run make-seeds first.')
    writer = PseudoMaskWriter(out_dir)
    todo = writer.pending(list(names))
    opts = dict(out_dir=str(out_dir), image_root=str(image_root), image_suffix=image_suffix, seed_dir=str(seed_dir),
                no_label=_no_label_names(seed_dir), bg_threshold=float(bg_threshold), high=high, low=low,
                refine=list(refine), prob_power=prob_power, par_kwargs=par_kwargs, crf_kwargs=crf_kwargs,
                par_scale=par_scale)
    tasks = [(n, opts) for n in todo]
    bar = tqdm(total=len(tasks), desc='pseudo-masks', unit='img', disable=not progress)
    if workers and workers > 1 and len(tasks) > 1:
        import multiprocessing as mp

        with mp.get_context('spawn').Pool(workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(_one, tasks, chunksize=max(1, len(tasks) // (workers * 8))):
                bar.update(1)
    else:
        for task in tasks:
            _one(task)
            bar.update(1)
    bar.close()
    summary = dict(written=len(todo), skipped_done=len(names) - len(todo), total=len(names), out_dir=str(out_dir))
    meta = {k: v for k, v in opts.items() if k not in ('no_label',)}
    atomic_save_json(Path(out_dir) / 'pseudo_meta.json', dict(meta, **{k: summary[k] for k in ('total',)}))
    return summary


def read_pseudo_meta(out_dir: PathLike) -> Dict[str, Any]:
    """Parameters a pseudo-mask folder was written with (``pseudo_meta.json``)."""
    return json.loads((Path(out_dir) / 'pseudo_meta.json').read_text())
