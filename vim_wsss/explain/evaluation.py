"""Explanation-quality evaluation: perturbation tests and the segmentation test.

* :func:`perturbation_test` (Chefer et al.'s protocol, ``baselines/ViT/pertubation_eval_from_hdf5.py``): for each
  (image, target class) sample, the pixels of the class relevance map (at image resolution) are ranked; the top
  (positive perturbation) or bottom (negative perturbation) 10%..90% are set to black and the model is re-run.
  Accuracy of the target class per fraction; AUC = trapezoid over the fraction axis of the accuracy in percent (so a
  curve at 100% everywhere between 0.1 and 0.9 gives 80). Lower positive AUC and higher negative AUC are better.
  Targets: ``'labels'`` = every present class of a multi-label batch (or the class of a single-label batch), or
  ``'pred'`` = the top-1 prediction. Correctness: ``'logit'`` = the target's logit > 0 (multi-label heads, sigmoid
  > 0.5), ``'top1'`` = the target is the argmax (single-label, ImageNet style).
* :func:`segmentation_test` (``imagenet_seg_eval.py`` of UnifiedImplicitAttnRepr / Chefer): relevance at the mask
  resolution, min-max normalised; foreground = relevance > its mean; pixel accuracy and IoU of {background,
  foreground} accumulated over the whole set (mIoU = their mean); AP of the continuous map per sample (scores
  ``(1 - Res, Res)`` against the one-hot {bg, fg} mask, flattened together) averaged over samples (mAP). Works on any
  loader of ``(images, masks)``; mask value 255 is ignored.
* :class:`ImagenetSegmentation`: the ImageNet-Segmentation ``gtsegs_ijcv.mat`` (HDF5 object references under
  ``/value/img`` and ``/value/gt``), resized to a square like the reference (image bilinear, mask nearest).

Batches from a loader may be tuples ``(images, labels_or_masks, ...)`` or dicts with the keys 'img'/'image'/'inputs'
and 'label'/'labels'/'cls_label' (classification) or 'mask'/'gt'/'seg' (segmentation). Models must be in eval mode;
nothing is trained here.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .attribution import relevance_maps

__all__ = [
    'DEFAULT_FRACTIONS', 'perturbation_test', 'perturb', 'segmentation_test', 'SegmentationMeter', 'average_precision',
    'ImagenetSegmentation', 'black_fill',
]

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

try:  # 0..255-scale ImageNet statistics (vim_wsss.data.voc when available)
    from vim_wsss.data.voc import IMAGENET_MEAN, IMAGENET_STD
except ImportError:  # pragma: no cover - fallback until vim_wsss.data lands
    IMAGENET_MEAN = (123.675, 116.28, 103.53)
    IMAGENET_STD = (58.395, 57.12, 57.375)

try:
    from vim_wsss.data.voc import DataError
except ImportError:  # pragma: no cover
    class DataError(ValueError):
        """Invalid user data (names the file and the fix)."""


# ----------------------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------------------
_IMAGE_KEYS = ('img', 'image', 'images', 'inputs')
_LABEL_KEYS = ('label', 'labels', 'cls_label', 'cls_labels', 'target')
_MASK_KEYS = ('mask', 'masks', 'gt', 'seg', 'gt_seg', 'label', 'target')


def _pick(batch: Dict[str, Any], keys: Sequence[str], what: str) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    raise ValueError(f'batch dict has no {what} (looked for {list(keys)}; got keys {sorted(batch)}).')


def _unpack(batch: Any, keys: Sequence[str], what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return _pick(batch, _IMAGE_KEYS, 'images'), _pick(batch, keys, what)
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f'cannot read a batch of type {type(batch).__name__}; expected (images, {what}) or a dict.')


def black_fill(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised value of a black pixel, ``(1, 3, 1, 1)``: ``(0 - mean) / std`` (ImageNet statistics)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype)
    return (-mean / std).view(1, 3, 1, 1)


def _targets(logits: torch.Tensor, labels: Optional[torch.Tensor], targets: str) -> List[List[int]]:
    """Target classes per image."""
    if targets == 'pred':
        return [[int(c)] for c in logits.argmax(dim=1)]
    if targets != 'labels':
        raise ValueError(f"targets must be 'labels' or 'pred', got {targets!r}")
    if labels is None:
        raise ValueError("targets='labels' needs labels in the batch.")
    labels = torch.as_tensor(labels)
    if labels.dim() == 1:  # single-label indices
        return [[int(c)] for c in labels]
    return [torch.nonzero(row > 0.5).flatten().tolist() for row in labels]


def _pad_classes(per_image: List[List[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` class matrix (rows padded with their first class) and the validity mask ``(B, K)``."""
    width = max(len(c) for c in per_image)
    classes = torch.zeros(len(per_image), width, dtype=torch.long)
    valid = torch.zeros(len(per_image), width, dtype=torch.bool)
    for i, cls in enumerate(per_image):
        if cls:
            classes[i, :len(cls)] = torch.tensor(cls)
            classes[i, len(cls):] = cls[0]
            valid[i, :len(cls)] = True
    return classes, valid


def _correct(logits: torch.Tensor, classes: torch.Tensor, criterion: str) -> torch.Tensor:
    if criterion == 'logit':
        return logits.gather(1, classes[:, None]).squeeze(1) > 0
    if criterion == 'top1':
        return logits.argmax(dim=1) == classes
    raise ValueError(f"criterion must be 'logit' or 'top1', got {criterion!r}")


# ----------------------------------------------------------------------------------------------------------------
# perturbation
# ----------------------------------------------------------------------------------------------------------------
def perturb(images: torch.Tensor, maps: torch.Tensor, fraction: float, positive: bool) -> torch.Tensor:
    """Black out the most (positive) or least (negative) relevant ``fraction`` of the pixels.

    Args:
        images: ``(N, 3, H, W)`` normalised.
        maps: ``(N, H, W)`` relevance.
        fraction: share of pixels to remove, in [0, 1].
        positive: remove the most relevant pixels (else the least relevant).

    Returns:
        ``(N, 3, H, W)`` perturbed copy.
    """
    n, _, height, width = images.shape
    count = int(height * width * fraction)
    out = images.clone()
    if count == 0:
        return out
    scores = maps.reshape(n, -1).float()
    idx = torch.topk(scores if positive else -scores, count, dim=1).indices  # (N, count)
    drop = torch.zeros(n, height * width, dtype=torch.bool, device=images.device)
    drop.scatter_(1, idx.to(images.device), True)
    drop = drop.view(n, 1, height, width)
    return torch.where(drop, black_fill(images.device, images.dtype), out)


def perturbation_test(model: nn.Module, loader: Iterable, method: str, *,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS, targets: str = 'labels',
                      criterion: str = 'logit', start_layer: Optional[int] = None,
                      device: Optional[torch.device] = None, max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Positive and negative perturbation curves of a relevance method.

    Args:
        model: classifier (ViM or DeiT backbone with a head), eval mode.
        loader: yields ``(images (B, 3, H, W), labels)`` with labels multi-hot ``(B, C)`` or indices ``(B,)``.
        method: relevance method (see :data:`vim_wsss.explain.attribution.METHODS`).
        fractions: shares of pixels removed.
        targets: 'labels' (every present class) or 'pred' (top-1 prediction).
        criterion: 'logit' (target logit > 0) or 'top1' (target is the argmax).
        start_layer: passed to :func:`relevance_maps`.
        device: where to run (default the model's device).
        max_batches: stop after this many batches.

    Returns:
        ``{'fractions', 'num_samples', 'clean_accuracy', 'positive': {'accuracy': [...], 'auc'},
        'negative': {...}}`` with accuracies in percent.
    """
    device = device or next(model.parameters()).device
    hits = {True: np.zeros(len(fractions)), False: np.zeros(len(fractions))}
    clean, total = 0.0, 0
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        images, labels = _unpack(batch, _LABEL_KEYS, 'labels')
        images = images.to(device).float()
        with torch.no_grad():
            logits = model(images)
        per_image = _targets(logits, labels if targets == 'labels' else None, targets)
        keep = [i for i, c in enumerate(per_image) if c]
        if not keep:
            continue
        images, logits = images[keep], logits[keep]
        classes, valid = _pad_classes([per_image[i] for i in keep])
        maps = relevance_maps(model, images, classes.to(device), method, start_layer=start_layer)
        rows, cols = torch.nonzero(valid, as_tuple=True)
        samples, sample_maps = images[rows.to(device)], maps[rows.to(device), cols.to(device)]
        sample_classes = classes[rows, cols].to(device)
        clean += float(_correct(logits[rows.to(device)], sample_classes, criterion).sum())
        total += len(rows)
        for positive in (True, False):
            for j, fraction in enumerate(fractions):
                with torch.no_grad():
                    out = model(perturb(samples, sample_maps, fraction, positive))
                hits[positive][j] += float(_correct(out, sample_classes, criterion).sum())
    if total == 0:
        raise ValueError('perturbation_test: the loader gave no sample with a target class.')
    result: Dict[str, Any] = dict(fractions=list(map(float, fractions)), num_samples=total,
                                  clean_accuracy=100.0 * clean / total)
    for positive, name in ((True, 'positive'), (False, 'negative')):
        acc = 100.0 * hits[positive] / total
        result[name] = dict(accuracy=acc.tolist(), auc=float(np.trapezoid(acc, np.asarray(fractions, float))))
    return result


# ----------------------------------------------------------------------------------------------------------------
# segmentation test
# ----------------------------------------------------------------------------------------------------------------
def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of binary ``targets`` ranked by ``scores`` (scikit-learn's definition: ties share a
    threshold; ``sum_k (R_k - R_{k-1}) P_k``). 0 when there is no positive (the reference's ``nan_to_num``)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel().astype(np.float64)
    positives = targets.sum()
    if positives == 0:
        return 0.0
    order = np.argsort(-scores, kind='stable')
    scores, targets = scores[order], targets[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]  # last index of each distinct score
    tp = np.cumsum(targets)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _seg_samples(logits: torch.Tensor, masks: torch.Tensor, targets: str, ignore_index: int
                 ) -> List[List[Tuple[int, torch.Tensor]]]:
    """Per image: list of (class index, binary foreground mask)."""
    out = []
    for b in range(masks.shape[0]):
        mask = masks[b]
        if targets == 'pred':
            out.append([(int(logits[b].argmax()), (mask > 0) & (mask != ignore_index))])
        elif targets == 'mask_classes':
            values = [int(v) for v in torch.unique(mask) if 0 < int(v) != ignore_index and int(v) <= logits.shape[1]]
            out.append([(v - 1, mask == v) for v in values])
        else:
            raise ValueError(f"targets must be 'pred' or 'mask_classes', got {targets!r}")
    return out


class SegmentationMeter:
    """Accumulates the segmentation-test scores of (relevance map, binary mask) samples.

    Per sample: prediction = ``res > res.mean()``; pixel counts and the {bg, fg} intersections / unions are summed
    over all samples (pixel accuracy, IoU per class, mIoU = their mean); AP of scores ``(1 - res, res)`` against the
    one-hot {bg, fg} mask (flattened together, as the reference's ``get_ap_scores``) is averaged over samples.
    """

    def __init__(self) -> None:
        self.correct = 0
        self.labeled = 0
        self.inter = np.zeros(2, np.int64)
        self.union = np.zeros(2, np.int64)
        self.aps: List[float] = []

    def update(self, res: torch.Tensor, fg: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """Add one sample: relevance ``(h, w)`` (min-max normalised), foreground ``(h, w)`` bool, valid pixels."""
        valid = torch.ones_like(fg, dtype=torch.bool) if valid is None else valid.bool()
        pred = res > res.mean()
        gt = fg.bool() & valid
        self.correct += int(((pred == gt) & valid).sum())
        self.labeled += int(valid.sum())
        for cls_id, (p, g) in enumerate(((~pred, ~gt), (pred, gt))):
            self.inter[cls_id] += int((p & g & valid).sum())
            self.union[cls_id] += int(((p | g) & valid).sum())
        v = valid.flatten().cpu().numpy()
        r = res.detach().float().flatten().cpu().numpy()[v]
        g = gt.flatten().cpu().numpy()[v]
        self.aps.append(average_precision(np.r_[1.0 - r, r], np.r_[~g, g]))

    def result(self) -> Dict[str, Any]:
        """``{'pixel_accuracy', 'miou', 'iou_bg', 'iou_fg', 'map', 'num_samples'}`` (fractions in [0, 1])."""
        if not self.aps:
            raise ValueError('segmentation test: no sample was evaluated.')
        iou = self.inter / np.maximum(self.union, 1)
        return dict(pixel_accuracy=self.correct / max(self.labeled, 1), miou=float(iou.mean()),
                    iou_bg=float(iou[0]), iou_fg=float(iou[1]), map=float(np.mean(self.aps)),
                    num_samples=len(self.aps))


def segmentation_test(model: nn.Module, loader: Iterable, method: str, *, targets: str = 'pred',
                      start_layer: Optional[int] = None, ignore_index: int = 255,
                      device: Optional[torch.device] = None, max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Pixel accuracy, mIoU over {bg, fg} and mAP of relevance maps against binary masks.

    Args:
        model: classifier, eval mode.
        loader: yields ``(images (B, 3, H, W), masks (B, h, w))``; mask 0 = background, other values foreground,
            ``ignore_index`` ignored.
        method: relevance method.
        targets: 'pred' = one map per image for the top-1 class against all foreground (ImageNet-Segmentation);
            'mask_classes' = one sample per class value v present in the mask (VOC: class index v - 1), its map
            against ``mask == v``.
        start_layer: passed to :func:`relevance_maps`.
        ignore_index: mask value excluded from every count.
        device: where to run (default the model's device).
        max_batches: stop after this many batches.

    Returns:
        :meth:`SegmentationMeter.result`.
    """
    device = device or next(model.parameters()).device
    meter = SegmentationMeter()
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        images, masks = _unpack(batch, _MASK_KEYS, 'masks')
        images, masks = images.to(device).float(), torch.as_tensor(masks).to(device).long()
        with torch.no_grad():
            logits = model(images)
        per_image = _seg_samples(logits, masks, targets, ignore_index)
        keep = [i for i, s in enumerate(per_image) if s]
        if not keep:
            continue
        classes, _ = _pad_classes([[c for c, _ in per_image[i]] for i in keep])
        maps = relevance_maps(model, images[keep], classes.to(device), method, start_layer=start_layer,
                              out_size=tuple(masks.shape[-2:]))
        for row, i in enumerate(keep):
            for col, (_, fg) in enumerate(per_image[i]):
                meter.update(maps[row, col], fg, masks[i] != ignore_index)
    return meter.result()


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-Segmentation
# ----------------------------------------------------------------------------------------------------------------
class ImagenetSegmentation(Dataset):
    """ImageNet-Segmentation (Guillaumin et al.) from ``gtsegs_ijcv.mat``, as in the explainability papers.

    The file is MATLAB v7.3 (HDF5): ``/value/img`` and ``/value/gt`` are ``(n, 1)`` object references; an image
    dataset is stored ``(3, W, H)`` (transposed to ``(H, W, 3)``), a mask reference points to a ``(1, 1)``
    reference to the ``(W, H)`` mask. Images are resized to ``size`` x ``size`` bilinearly (PIL, as torchvision's
    ``Resize`` on PIL images), masks with nearest neighbour, images normalised with ImageNet statistics.

    Args:
        path: the ``.mat`` file.
        size: output side (224 for the papers).

    Items: ``(image (3, size, size) float32, mask (size, size) int64)``.
    """

    def __init__(self, path: str, size: int = 224) -> None:
        import h5py

        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found: download gtsegs_ijcv.mat (ImageNet-Segmentation, '
                                    'Guillaumin et al. 2014) and pass its path.')
        self.path, self.size = path, int(size)
        self._file = None
        try:
            with h5py.File(path, 'r') as handle:
                for key in ('/value/img', '/value/gt'):
                    if key not in handle:
                        raise DataError(f'{path}: no dataset {key}; expected the HDF5 (MATLAB v7.3) gtsegs_ijcv.mat '
                                        'with /value/img and /value/gt object references.')
                self._length = int(handle['/value/img'].shape[0])
                if int(handle['/value/gt'].shape[0]) != self._length:
                    raise DataError(f'{path}: /value/img and /value/gt have different lengths; the file is damaged, '
                                    'download it again.')
        except OSError as err:
            raise DataError(f'{path} is not a readable HDF5 file ({err}); it must be the MATLAB v7.3 '
                            'gtsegs_ijcv.mat.') from err

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state['_file'] = None  # h5py handles are per worker
        return state

    def read_raw(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and mask ``(H, W)`` uint8 at their original size."""
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, 'r')
        handle = self._file
        img = np.array(handle[handle['/value/img'][index, 0]]).transpose(2, 1, 0)
        gt = np.array(handle[handle[handle['/value/gt'][index, 0]][0, 0]]).transpose(1, 0)
        return np.ascontiguousarray(img.astype(np.uint8)), np.ascontiguousarray(gt.astype(np.uint8))

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        img, gt = self.read_raw(index)
        img = np.asarray(Image.fromarray(img).convert('RGB').resize((self.size, self.size), Image.BILINEAR))
        gt = np.asarray(Image.fromarray(gt).resize((self.size, self.size), Image.NEAREST))
        mean = np.asarray(IMAGENET_MEAN, np.float32)
        std = np.asarray(IMAGENET_STD, np.float32)
        image = torch.from_numpy(((img.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())
        return image, torch.from_numpy(gt.astype(np.int64))
