"""Evaluation of seeds and pseudo-masks against ground truth, background-threshold sweep, trivial baselines, overlays.

All scores use one confusion matrix over the whole image set (:class:`vim_wsss.metrics.SegConfusion`, GT 255
ignored) and are reported in **percent**. A predicted 255 (ignore band) counts as a miss of the true class in
``miou``; ``miou_valid`` scores only the pixels the mask does not ignore, and ``ignored`` is the fraction (percent)
of scored GT pixels the mask left as 255.

The threshold sweep never picks the threshold on the split it reports: it chooses it on ``tune_names`` (e.g.
``train_aug`` minus ``train``) and scores it on ``score_names`` (e.g. ``train``), and writes the two curves to a
PNG and a JSON file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from vim_wsss.data.voc import (IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, VOC_PALETTE, DataError, read_image, read_mask,
                               read_mask_pair, read_split)
from vim_wsss.metrics import SegConfusion

from .seeds import load_map_file, map_path, seeds_from_maps, upsample_maps

__all__ = [
    'summarize', 'score_pairs', 'eval_masks', 'eval_seeds', 'sweep_bg_threshold', 'sweep_seeds', 'split_difference',
    'baseline_mask', 'baseline_masks', 'eval_baselines', 'BASELINES', 'colorize', 'save_overlays', 'seed_source',
]

PathLike = Union[str, os.PathLike]
BASELINES = ('background', 'whole_image', 'centre_blob')
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10 .. 0.90


# ----------------------------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------------------------
class _Scorer:
    """Two confusion matrices: all scored pixels (255 predictions = misses) and non-ignored predictions only."""

    def __init__(self) -> None:
        self.all = SegConfusion(NUM_CLASSES, IGNORE_INDEX)
        self.valid = SegConfusion(NUM_CLASSES, IGNORE_INDEX)
        self.ignored = 0
        self.scored = 0
        self.images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str = '?') -> None:
        if pred.shape != gt.shape:
            raise ValueError(f'{name}: prediction {pred.shape} and ground truth {gt.shape} differ in size')
        self.all.update(pred, gt)
        scored = gt != IGNORE_INDEX
        ignored = pred == IGNORE_INDEX
        self.valid.update(pred, np.where(ignored, IGNORE_INDEX, gt))
        self.ignored += int((ignored & scored).sum())
        self.scored += int(scored.sum())
        self.images += 1

    def result(self) -> Dict[str, Any]:
        return summarize(self.all, self.valid, self.ignored, self.scored, self.images)


def _pct(values: Sequence[float]) -> List[Optional[float]]:
    return [None if v is None or not np.isfinite(v) else round(100.0 * float(v), 4) for v in values]


def summarize(all_pixels: SegConfusion, valid: SegConfusion, ignored: int, scored: int, images: int
              ) -> Dict[str, Any]:
    """Metrics dict (percent): miou, iou (21), precision, recall, acc, miou_valid, ignored, images, classes."""
    full, kept = all_pixels.compute(), valid.compute()
    return dict(miou=_pct([full['miou']])[0], iou=_pct(full['iou']), precision=_pct(full['precision']),
                recall=_pct(full['recall']), acc=_pct([full['acc']])[0], miou_valid=_pct([kept['miou']])[0],
                ignored=round(100.0 * ignored / max(scored, 1), 4), images=images, classes=list(VOC_CLASSES))


def score_pairs(pairs: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, Any]:
    """Metrics of in-memory ``(pred, gt)`` pairs (see the module docstring)."""
    scorer = _Scorer()
    for pred, gt in pairs:
        scorer.update(np.asarray(pred), np.asarray(gt))
    return scorer.result()


def _names(gt_root: PathLike, split: Optional[str], names: Optional[Sequence[str]]) -> List[str]:
    if names is not None:
        return list(names)
    if split is None:
        raise ValueError('give a split name or an explicit list of names')
    return read_split(gt_root, split)


def eval_masks(pred_dir: PathLike, gt_root: PathLike, split: Optional[str] = None,
               mask_dir: str = 'SegmentationClassAug', names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Score a folder of ``<name>.png`` masks against ``<gt_root>/<mask_dir>``.

    Args:
        pred_dir: predicted masks (pseudo-masks, baselines, ...).
        gt_root: VOC root (with ImageSets/Segmentation and the GT folder).
        split: split list naming the images (ignored when ``names`` is given).
        mask_dir: GT folder under ``gt_root``.
        names: explicit image names.

    Returns:
        Metrics in percent (see the module docstring).
    """
    pred_dir, gt_root = Path(pred_dir), Path(gt_root)
    scorer = _Scorer()
    for name in _names(gt_root, split, names):
        pred_file = pred_dir / f'{name}.png'
        if not pred_file.is_file():
            raise FileNotFoundError(f'mask {pred_file} missing: {pred_dir} does not cover split {split!r}; '
                                    'run make-pseudo for the same names (it resumes).')
        scorer.update(*read_mask_pair(pred_file, gt_root / mask_dir / f'{name}.png'), name)
    return scorer.result()


def _seed_maps(seed_dir: PathLike, name: str, maps_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(classes, upsampled maps (K, H, W) numpy) of one cached image."""
    cache = load_map_file(map_path(seed_dir, name))
    if maps_key not in cache:
        raise DataError(f'seed cache of {name} has no {maps_key!r} maps (keys: {sorted(cache)}); it was made with '
                        'make-seeds --no-rw: re-run make-seeds without --no-rw (--overwrite), or drop --rw.')
    size = tuple(int(s) for s in cache['size'])
    return cache['classes'], upsample_maps(cache[maps_key], size).numpy()


def eval_seeds(seed_dir: PathLike, gt_root: PathLike, names: Sequence[str], bg_threshold: float,
               high: Optional[float] = None, low: Optional[float] = None, mask_dir: str = 'SegmentationClassAug',
               maps_key: str = 'maps', no_label: Sequence[str] = ()) -> Dict[str, Any]:
    """Score seeds made on the fly from the cache (no PNGs written); ``maps_key`` 'maps' or 'rw'.

    Images listed in ``no_label`` (skipped by the maps stage) are scored as all background.
    """
    scorer = _Scorer()
    skip = set(no_label)
    for name in names:
        gt = read_mask(Path(gt_root) / mask_dir / f'{name}.png')
        if name in skip and not map_path(seed_dir, name).is_file():
            scorer.update(np.zeros_like(gt), gt, name)
            continue
        classes, maps = _seed_maps(seed_dir, name, maps_key)
        scorer.update(seeds_from_maps(maps, classes, bg_threshold, high, low), gt, name)
    return scorer.result()


def split_difference(gt_root: PathLike, split: str, minus: str) -> List[str]:
    """Names of ``split`` that are not in ``minus`` (e.g. the held-out part of train_aug outside train)."""
    drop = set(read_split(gt_root, minus))
    return [n for n in read_split(gt_root, split) if n not in drop]


def sweep_bg_threshold(seed_dir: PathLike, gt_root: PathLike, thresholds: Sequence[float],
                       tune_names: Sequence[str], score_names: Sequence[str], mask_dir: str = 'SegmentationClassAug',
                       maps_key: str = 'maps', out_dir: Optional[PathLike] = None, tag: str = 'seeds',
                       progress: bool = False) -> Dict[str, Any]:
    """Choose the background threshold on ``tune_names`` and report it scored on ``score_names``.

    Args:
        seed_dir: map cache.
        gt_root: VOC root.
        thresholds: candidate background scores.
        tune_names: images the threshold is chosen on (must not be empty).
        score_names: images the chosen threshold is reported on.
        mask_dir: GT folder.
        maps_key: 'maps' (raw) or 'rw' (random-walk) maps.
        out_dir: where ``<tag>_sweep.json`` and ``<tag>_sweep.png`` go (None = nothing written).
        tag: file-name prefix.
        progress: tqdm bar.

    Returns:
        dict with ``best_threshold``, ``tune_miou`` and ``score_miou`` (lists over thresholds), ``score`` (the full
        metrics at the chosen threshold), ``oracle_threshold`` / ``oracle_miou`` (best on the score split, for
        reference only), ``json`` and ``png`` paths when written.
    """
    from tqdm import tqdm

    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise DataError('no thresholds to sweep; give some (e.g. --sweep 0.2 0.3 0.4) or none for the default grid.')
    bad = [t for t in thresholds if not (np.isfinite(t) and 0.0 <= t <= 1.0)]
    if bad:
        raise DataError(f'sweep thresholds {bad} are not in [0, 1] (the maps are min-max normalised).')
    if not tune_names:
        raise DataError('no images to tune the threshold on (tune_names is empty): the threshold must be chosen on '
                        'images other than the scored ones; pick a --tune-split that holds more than --split.')
    num = NUM_CLASSES
    matrices = {part: np.zeros(len(thresholds) * num * num, np.int64) for part in ('tune', 'score')}
    images = {'tune': 0, 'score': 0}
    levels = np.asarray(thresholds, np.float32).reshape(-1, 1)
    offsets = (np.arange(len(thresholds)) * num * num).reshape(-1, 1)
    jobs = [('tune', n) for n in tune_names] + [('score', n) for n in score_names]
    for part, name in tqdm(jobs, desc=f'sweep ({maps_key})', disable=not progress, unit='img'):
        gt = read_mask(Path(gt_root) / mask_dir / f'{name}.png')
        classes, maps = _seed_maps(seed_dir, name, maps_key)
        if maps.shape[1:] != gt.shape:
            raise ValueError(f'{name}: cached maps are for {maps.shape[1:]} but the ground truth is {gt.shape}')
        keep = gt.reshape(-1) != IGNORE_INDEX
        truth = gt.reshape(-1)[keep].astype(np.int64)
        if classes.size == 0:
            best, arg = np.zeros(truth.shape, np.float32), np.zeros(truth.shape, np.int64)
        else:
            flat = maps.reshape(maps.shape[0], -1)[:, keep]
            best, arg = flat.max(axis=0), np.asarray(classes, np.int64)[flat.argmax(axis=0)]
        preds = np.where(best[None] > levels, arg[None], 0)  # (T, P): one bincount for every threshold
        matrices[part] += np.bincount((offsets + truth[None] * num + preds).reshape(-1), minlength=matrices[part].size)
        images[part] += 1
    tune = [_from_matrix(m, images['tune']) for m in matrices['tune'].reshape(-1, num, num)]
    score = [_from_matrix(m, images['score']) for m in matrices['score'].reshape(-1, num, num)]
    tune_miou = [r['miou'] for r in tune]
    score_miou = [r['miou'] for r in score]
    pick = int(np.nanargmax(np.asarray(tune_miou, dtype=float)))
    oracle = int(np.nanargmax(np.asarray(score_miou, dtype=float))) if score_names else pick
    result: Dict[str, Any] = dict(thresholds=thresholds, tune_miou=tune_miou, score_miou=score_miou,
                                  best_threshold=thresholds[pick], score=score[pick] if score_names else None,
                                  oracle_threshold=thresholds[oracle],
                                  oracle_miou=score_miou[oracle] if score_names else None,
                                  maps_key=maps_key, tune_images=len(tune_names), score_images=len(score_names))
    if out_dir is not None:
        result.update(_write_sweep(result, Path(out_dir), tag))
    return result


def sweep_seeds(seed_dir: PathLike, data_root: PathLike, split: str = 'train', tune_split: str = 'train_aug',
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS, keys: Sequence[str] = ('maps',),
                mask_dir: str = 'SegmentationClassAug', out_dir: Optional[PathLike] = None,
                progress: bool = False) -> Dict[str, Dict[str, Any]]:
    """The sweep stage (``vim-wsss eval-masks --sweep`` and the pipeline): per maps key, a threshold chosen on
    ``tune_split`` minus ``split`` and scored on ``split``.

    Args:
        seed_dir: map cache of make-seeds.
        data_root: VOC root.
        split, tune_split: scored split and the split the threshold is tuned on (minus the scored names).
        thresholds: candidates (in [0, 1]).
        keys: 'maps' (raw) and/or 'rw' (random-walk maps); files are tagged ``seeds`` / ``seeds_rw``.
        mask_dir: GT folder.
        out_dir: where the curves go (None = nothing written).
        progress: tqdm bar.

    Returns:
        ``{key: sweep_bg_threshold result}``.
    """
    score = read_split(data_root, split)
    tune = split_difference(data_root, tune_split, split)
    if not tune:
        raise DataError(f'--tune-split {tune_split} holds no image outside --split {split}: the threshold must be '
                        f'chosen on other images than the scored ones; pick a larger --tune-split (e.g. train_aug).')
    return {key: sweep_bg_threshold(seed_dir, data_root, thresholds, tune, score, mask_dir=mask_dir, maps_key=key,
                                    out_dir=out_dir, tag='seeds' if key == 'maps' else f'seeds_{key}',
                                    progress=progress)
            for key in keys}


def _from_matrix(matrix: np.ndarray, images: int) -> Dict[str, Any]:
    """Metrics of a confusion matrix of masks without ignored predictions."""
    conf = SegConfusion(NUM_CLASSES, IGNORE_INDEX)
    conf.matrix += matrix
    return summarize(conf, conf, 0, int(matrix.sum()), images)


def _write_sweep(result: Dict[str, Any], out_dir: Path, tag: str) -> Dict[str, str]:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from vim_wsss.utils import atomic_save_json, atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(result['thresholds'], result['tune_miou'], 'o-', label=f"tune ({result['tune_images']} img)")
    if result['score'] is not None:
        ax.plot(result['thresholds'], result['score_miou'], 's-', label=f"score ({result['score_images']} img)")
    ax.axvline(result['best_threshold'], color='k', ls='--', lw=1, label=f"chosen {result['best_threshold']:.2f}")
    ax.set_xlabel('background threshold')
    ax.set_ylabel('mIoU (%)')
    ax.set_title(f"{tag} ({result['maps_key']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / f'{tag}_sweep.png'
    atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=110, format='png'))
    plt.close(fig)
    path = out_dir / f'{tag}_sweep.json'
    atomic_save_json(path, result)
    return dict(json=str(path), png=str(png))


# ----------------------------------------------------------------------------------------------------------------
# trivial baselines
# ----------------------------------------------------------------------------------------------------------------
def baseline_mask(kind: str, classes: Sequence[int], size: Tuple[int, int], blob_fraction: float = 0.6
                  ) -> np.ndarray:
    """A label-only mask that looks at no pixel.

    Args:
        kind: 'background' (every pixel background: what a segmenter scores without looking), 'whole_image'
            (every pixel = the first listed class) or 'centre_blob' (a centred ellipse with
            semi-axes ``blob_fraction * H / 2`` and ``blob_fraction * W / 2``, split into equal vertical strips, one
            per listed class, left to right; background outside).
        classes: the image's VOC classes 1..20 (empty = all background).
        size: (H, W).
        blob_fraction: ellipse size relative to the image.

    Returns:
        ``(H, W)`` uint8.
    """
    height, width = size
    classes = [int(c) for c in classes]
    if kind not in BASELINES:
        raise ValueError(f'unknown baseline {kind!r}; choose from {BASELINES}')
    if not classes or kind == 'background':
        return np.zeros(size, dtype=np.uint8)
    if kind == 'whole_image':
        return np.full(size, classes[0], dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ry, rx = max(blob_fraction * height / 2, 0.5), max(blob_fraction * width / 2, 0.5)
    inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    strip = np.clip(((xs - (cx - rx)) / (2 * rx) * len(classes)).astype(int), 0, len(classes) - 1)
    out = np.where(inside, np.asarray(classes, np.uint8)[strip], 0)
    return out.astype(np.uint8)


def _classes_of(label: np.ndarray) -> List[int]:
    return [int(i) + 1 for i in np.flatnonzero(np.asarray(label) > 0)]


def baseline_masks(kind: str, names: Sequence[str], labels: Mapping[str, np.ndarray], gt_root: PathLike,
                   out_dir: PathLike, mask_dir: str = 'SegmentationClassAug') -> Path:
    """Write baseline masks (sizes from the GT masks) as ``<out_dir>/<name>.png``; returns ``out_dir``."""
    from vim_wsss.data.voc import save_mask

    out = Path(out_dir)
    for name in names:
        size = read_mask(Path(gt_root) / mask_dir / f'{name}.png').shape
        save_mask(out / f'{name}.png', baseline_mask(kind, _classes_of(labels[name]), size))
    return out


def eval_baselines(gt_root: PathLike, names: Sequence[str], labels: Mapping[str, np.ndarray],
                   kinds: Sequence[str] = BASELINES, mask_dir: str = 'SegmentationClassAug') -> Dict[str, Any]:
    """Metrics of each baseline on ``names`` (no files written): ``{kind: metrics}``."""
    scorers = {kind: _Scorer() for kind in kinds}
    for name in names:
        gt = read_mask(Path(gt_root) / mask_dir / f'{name}.png')
        for kind, scorer in scorers.items():
            scorer.update(baseline_mask(kind, _classes_of(labels[name]), gt.shape), gt, name)
    return {kind: scorer.result() for kind, scorer in scorers.items()}


# ----------------------------------------------------------------------------------------------------------------
# overlays
# ----------------------------------------------------------------------------------------------------------------
def colorize(mask: np.ndarray) -> np.ndarray:
    """Label mask ``(H, W)`` -> RGB uint8 with the VOC palette (255 = white)."""
    palette = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(256, 3).copy()
    palette[IGNORE_INDEX] = 255
    return palette[np.asarray(mask, dtype=np.uint8)]


MaskSource = Union[PathLike, Callable[[str], np.ndarray]]


def save_overlays(names: Sequence[str], image_root: PathLike, columns: Mapping[str, MaskSource], out_png: PathLike,
                  alpha: float = 0.55, image_suffix: str = '.jpg') -> Path:
    """A grid PNG: one row per image, the image then one overlay per column (image blended with the mask colours).

    Args:
        names: images (a handful).
        image_root: folder with the images.
        columns: title -> folder of ``<name>.png`` masks, or a callable ``name -> (H, W) mask``.
        out_png: output file (written atomically).
        alpha: mask opacity.
        image_suffix: image extension.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from vim_wsss.utils import atomic_write

    titles = ['image'] + list(columns)
    fig, axes = plt.subplots(len(names), len(titles), figsize=(1.9 * len(titles), 1.9 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        image = read_image(Path(image_root) / f'{name}{image_suffix}')
        panels = [image]
        for source in columns.values():
            mask = source(name) if callable(source) else read_mask(Path(source) / f'{name}.png')
            panels.append((image * (1 - alpha) + colorize(mask) * alpha).astype(np.uint8))
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=6)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format='png'))
    plt.close(fig)
    return Path(out_png)


def seed_source(seed_dir: PathLike, bg_threshold: float, maps_key: str = 'maps', high: Optional[float] = None,
                low: Optional[float] = None) -> Callable[[str], np.ndarray]:
    """A :func:`save_overlays` column that thresholds cached maps on the fly."""
    def make(name: str) -> np.ndarray:
        classes, maps = _seed_maps(seed_dir, name, maps_key)
        return seeds_from_maps(maps, classes, bg_threshold, high, low)

    return make
