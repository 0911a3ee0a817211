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

Under torchrun (:mod:`vim_wsss.dist`) each rank labels its shard (``sorted(names)[rank::world]``) with its own
``workers`` processes (``world x workers`` in all: size ``--workers`` to the cores per rank); rank 0 locks the folder
and writes ``pseudo_meta.json`` before the others start, and the counts are summed at the closing barrier. Memory
is bounded per process: one image's maps, probabilities and CRF at a time.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from vim_wsss.data.voc import DataError

from .refine import PIXEL_STEPS, refine_probs, scores_to_probs
from .seeds import META_FILE, NO_LABEL_FILE, load_map_file, map_path, upsample_maps

__all__ = ['pseudo_label', 'make_pseudo', 'PseudoMaskWriter', 'check_steps', 'check_thresholds', 'check_workers',
           'NO_LABEL_FILE', 'PSEUDO_META']

PathLike = Union[str, os.PathLike]
STEPS = ('rw',) + PIXEL_STEPS
PSEUDO_META = 'pseudo_meta.json'


def check_steps(refine: Sequence[str]) -> Tuple[bool, List[str]]:
    """Validate a step list: returns (use the random-walk maps, pixel steps in order).

    'rw' works on the cached patch-level maps, so it must come first; 'par' and 'crf' may come in any order.
    """
    refine = list(refine)
    unknown = [s for s in refine if s not in STEPS]
    if unknown:
        raise DataError(f'unknown refinement steps {unknown} in --refine; choose from {list(STEPS)} '
                        "(e.g. --refine rw par crf), or give --refine with no steps for raw seeds.")
    use_rw = 'rw' in refine
    if use_rw and (refine.index('rw') != 0 or refine.count('rw') > 1):
        raise DataError(f"'rw' propagates the patch-level maps and must be the first step (once), got --refine "
                        f"{' '.join(refine)}; e.g. --refine rw par crf.")
    return use_rw, [s for s in refine if s != 'rw']


def _unit_value(flag: str, value: Optional[float]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise DataError(f'{flag} {value}: must be a number in [0, 1] (the maps are min-max normalised); '
                        'pick one with `vim-wsss eval-masks SEEDS --sweep`.')


def check_thresholds(bg_threshold: float, high: Optional[float] = None, low: Optional[float] = None) -> None:
    """DataError unless every threshold is finite in [0, 1], high and low come together with low <= high, and
    ``bg_threshold`` lies within [low, high] (with a band it is not used, so it must not contradict it)."""
    for flag, value in (('--bg-threshold', bg_threshold), ('--high', high), ('--low', low)):
        _unit_value(flag, value)
    if (high is None) != (low is None):
        raise DataError('give both --high and --low for an ignore band, or neither.')
    if high is not None and low > high:
        raise DataError(f'--low {low} is above --high {high}; the ignore band needs --low <= --high.')
    if high is not None and not low <= bg_threshold <= high:
        raise DataError(f'--bg-threshold {bg_threshold} lies outside the ignore band [--low {low}, --high {high}]; '
                        'with a band the band decides, so give a --bg-threshold between --low and --high.')


def check_workers(workers: int) -> int:
    """``workers`` as an int >= 0 (DataError otherwise)."""
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise DataError(f'--workers {workers}: must be a whole number >= 0 (0 = in this process).')
    return int(workers)


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
        raise DataError('give both --high and --low for an ignore band, or neither.')
    size = tuple(int(s) for s in cache['size'])
    if image.shape[:2] != size:
        raise ValueError(f'image is {image.shape[:2]} but the cached maps were made for {size}')
    classes = np.asarray(cache['classes'], dtype=np.int64)
    if classes.size == 0:
        return np.zeros(size, dtype=np.uint8)
    if use_rw and 'rw' not in cache:
        raise DataError("--refine starts with 'rw' but the seed cache has no random-walk maps (it was made with "
                        "make-seeds --no-rw); re-run make-seeds without --no-rw (--overwrite), or drop 'rw' from "
                        '--refine.')
    maps = upsample_maps(cache['rw' if use_rw else 'maps'], size)
    args = (steps, prob_power, par_kwargs, crf_kwargs, par_scale)
    if high is None:
        return _label_pass(image, maps, classes, bg_threshold, *args)
    if low > high:
        raise DataError(f'--low {low} is above --high {high}; the ignore band needs --low <= --high.')
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
        """True when the mask exists and decodes whole as a single-channel PNG (a 0-byte or truncated file is not
        done)."""
        from PIL import Image

        path = self.path(name)
        if not path.is_file():
            return False
        try:
            with Image.open(path) as img:
                img.load()
                return img.format == 'PNG' and img.mode in ('P', 'L')
        except Exception:  # truncated / not an image
            return False

    def pending(self, names: Sequence[str]) -> List[str]:
        """Names without a complete mask; damaged masks are deleted (they will be redone)."""
        todo = []
        for name in names:
            if not self.done(name):
                if self.path(name).is_file():
                    self.path(name).unlink()
                todo.append(name)
        return todo

    def write(self, name: str, mask: np.ndarray) -> Path:
        from vim_wsss.data.voc import save_mask

        return save_mask(self.path(name), mask)


def _no_label_names(seed_dir: Path) -> set:
    path = seed_dir / NO_LABEL_FILE
    return set(path.read_text().split()) if path.is_file() else set()


def _one(task: Tuple[str, Dict[str, Any]]) -> Optional[str]:
    """Worker: compute and write one mask (module level so it pickles); None when ``skip_bad`` skipped the image."""
    from vim_wsss.data.voc import read_image

    name, opts = task
    writer = PseudoMaskWriter(opts['out_dir'])
    try:
        image = read_image(Path(opts['image_root']) / f"{name}{opts['image_suffix']}")
    except (DataError, FileNotFoundError):  # corrupt or missing image
        if opts['skip_bad']:
            return None
        raise
    cache_file = map_path(opts['seed_dir'], name)
    if not cache_file.is_file() and name in opts['no_label']:
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
    else:
        cache = load_map_file(cache_file)
        mask = pseudo_label(cache, image, opts['bg_threshold'], opts['high'], opts['low'], opts['refine'],
                            opts['prob_power'], opts['par_kwargs'], opts['crf_kwargs'], opts['par_scale'])
    writer.write(name, mask)
    return name


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Worker watchdog: exit as soon as the parent is gone (a SIGKILLed parent must not leave orphans writing)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (PR_SET_PDEATHSIG); elsewhere a no-op."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(parent: int) -> None:
    """Pool initializer: one torch thread; exit with the parent, at once on Linux, else within the watchdog poll."""
    torch.set_num_threads(1)
    _die_with_parent()
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _run_tasks(tasks: List[Tuple[str, Dict[str, Any]]], workers: int, progress: bool,
               desc: str = 'pseudo-masks') -> List[str]:
    """Run :func:`_one` over ``tasks`` (in this process, or a spawn pool); names skipped as unreadable."""
    from tqdm import tqdm

    skipped = []
    bar = tqdm(total=len(tasks), desc=desc, unit='img', disable=not progress)
    if workers > 1 and len(tasks) > 1:
        import multiprocessing as mp

        with mp.get_context('spawn').Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
            chunk = max(1, min(8, len(tasks) // (workers * 8)))
            for task, done in zip(tasks, pool.imap(_one, tasks, chunksize=chunk)):
                skipped += [task[0]] if done is None else []
                bar.update(1)
    else:
        for task in tasks:
            skipped += [task[0]] if _one(task) is None else []
            bar.update(1)
    bar.close()
    return skipped


def pseudo_params(seed_dir: Path, bg_threshold: float, high: Optional[float], low: Optional[float],
                  refine: Sequence[str], prob_power: float, par_kwargs: Optional[dict], crf_kwargs: Optional[dict],
                  par_scale: float, image_suffix: str) -> Dict[str, Any]:
    """What ``pseudo_meta.json`` records: every parameter a mask depends on, with the seed cache's own record."""
    return dict(bg_threshold=float(bg_threshold), high=high, low=low, refine=list(refine), prob_power=prob_power,
                par_kwargs=par_kwargs, crf_kwargs=crf_kwargs, par_scale=par_scale, image_suffix=image_suffix,
                maps_meta=json.loads((seed_dir / META_FILE).read_text()))


def make_pseudo(seed_dir: PathLike, image_root: PathLike, names: Sequence[str], out_dir: PathLike,
                bg_threshold: float, high: Optional[float] = None, low: Optional[float] = None,
                refine: Sequence[str] = ('rw', 'par', 'crf'), prob_power: float = 1.0,
                par_kwargs: Optional[dict] = None, crf_kwargs: Optional[dict] = None, par_scale: float = 1.0,
                workers: int = 0, image_suffix: str = '.jpg', progress: bool = True, overwrite: bool = False,
                skip_bad: bool = False) -> Dict[str, Any]:
    """Write pseudo-masks for ``names`` into ``out_dir`` (see the module docstring); the make-pseudo stage.

    Honest resume (:mod:`vim_wsss.wsss.resume`): the folder is locked, a killed run's temporaries are removed,
    ``pseudo_meta.json`` (written before the first mask) records the parameters and a re-run with others is refused
    (or restarts with ``overwrite``); a mask counts as done only if it decodes whole.

    Args:
        seed_dir: cache folder of :func:`~vim_wsss.wsss.seeds.compute_maps`.
        image_root: folder with ``<name><image_suffix>`` images (VOC ``JPEGImages``).
        names: images to label; names the maps stage skipped for having no positive label get all-background masks.
        out_dir: output folder.
        bg_threshold, high, low, refine, prob_power, par_kwargs, crf_kwargs, par_scale: see :func:`pseudo_label`.
        workers: processes (0 or 1 = in this process); they exit when this process dies.
        image_suffix: image file extension.
        progress: tqdm bar.
        overwrite: delete masks made with other parameters instead of refusing.
        skip_bad: skip images that cannot be read (listed in ``skipped_bad``) instead of stopping.

    Under torchrun each rank labels its shard of ``names`` (module docstring); every rank returns the totals.

    Returns:
        dict with ``written``, ``skipped_done``, ``redone``, ``skipped_bad``, ``total``, ``out_dir``, ``rank``,
        ``world`` (and ``shares``, each rank's number of images, under torchrun).

    Raises:
        DataError: a bad value, a folder made with other parameters or locked by another run, a damaged or
            non-finite seed cache.
    """
    from vim_wsss.dist import current_group, gather_results, shard, share_line
    from vim_wsss.wsss.resume import open_shared_output

    check_steps(refine)
    check_thresholds(bg_threshold, high, low)
    workers = check_workers(workers)
    seed_dir, out_dir = Path(seed_dir), Path(out_dir)
    if not (seed_dir / META_FILE).is_file():
        raise FileNotFoundError(f'{seed_dir} is not a seed cache (no {META_FILE}); run make-seeds first.')
    params = pseudo_params(seed_dir, bg_threshold, high, low, refine, prob_power, par_kwargs, crf_kwargs, par_scale,
                           image_suffix)
    group = current_group()
    mine = shard(list(names), group)
    opts = dict(params, out_dir=str(out_dir), image_root=str(image_root), seed_dir=str(seed_dir),
                no_label=_no_label_names(seed_dir), skip_bad=bool(skip_bad))

    def run_shard() -> Dict[str, Any]:
        writer = PseudoMaskWriter(out_dir)
        present = [n for n in mine if writer.path(n).is_file()]
        todo = writer.pending(mine)
        desc = ' '.join(filter(None, ['pseudo-masks', share_line(group, len(mine), len(names))]))
        skipped = _run_tasks([(n, opts) for n in todo], workers, progress, desc)
        return dict(written=len(todo) - len(skipped), skipped_done=len(mine) - len(todo),
                    redone=len(set(present) & set(todo)), skipped_bad=skipped, share=len(mine))

    with open_shared_output(group, out_dir, 'make-pseudo', PSEUDO_META, params,
                            lambda: sorted(out_dir.glob('*.png')), overwrite):
        shares = gather_results(run_shard, group)
    out = dict(written=sum(s['written'] for s in shares), skipped_done=sum(s['skipped_done'] for s in shares),
               redone=sum(s['redone'] for s in shares), skipped_bad=[n for s in shares for n in s['skipped_bad']],
               total=len(names), out_dir=str(out_dir), rank=group.rank, world=group.world)
    if group.sharded:
        out['shares'] = [s['share'] for s in shares]
    return out


def read_pseudo_meta(out_dir: PathLike) -> Dict[str, Any]:
    """Parameters a pseudo-mask folder was written with (``pseudo_meta.json``)."""
    return json.loads((Path(out_dir) / PSEUDO_META).read_text())
