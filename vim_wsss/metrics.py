"""Segmentation metric over a whole set: one confusion matrix, ignore 255, per-class IoU, mIoU, accuracies.

Convention (same as mmseg's ``IoUMetric``): IoU_c = TP / (TP + FP + FN) summed over the whole set (not averaged per
image); pixels whose ground truth is ``ignore_index`` are skipped; a class absent from both prediction and ground
truth is NaN and left out of the mean (``miou`` = nanmean); a class that only appears in predictions scores 0.
Predicted values outside ``0..num_classes-1`` (e.g. 255 left in a pseudo-mask) count as misses of the true class,
as mmseg's histogram does. Values are fractions in [0, 1] (mmseg reports percentages rounded to 2 decimals).
"""
from __future__ import annotations

from typing import Dict, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _flat(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(np.int64)


class SegConfusion:
    """Accumulates a ``(num_classes, num_classes)`` confusion matrix (rows = ground truth, cols = prediction).

    Args:
        num_classes: number of classes (21 for VOC).
        ignore_index: ground-truth value that is skipped (255).
    """

    def __init__(self, num_classes: int = 21, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.missed = np.zeros(num_classes, dtype=np.int64)  # GT pixels predicted as a value outside the classes

    def reset(self) -> 'SegConfusion':
        """Zero all counts."""
        self.matrix[:] = 0
        self.missed[:] = 0
        return self

    def update(self, pred: ArrayLike, gt: ArrayLike) -> 'SegConfusion':
        """Add one prediction / ground-truth pair (any equal shapes; predictions of 255 count as wrong)."""
        p, g = _flat(pred), _flat(gt)
        if p.shape != g.shape:
            raise ValueError(f'prediction has {p.size} pixels but ground truth has {g.size}')
        keep = g != self.ignore_index
        p, g = p[keep], g[keep]
        if g.size and (g.min() < 0 or g.max() >= self.num_classes):
            raise ValueError(f'ground truth values outside 0..{self.num_classes - 1} and {self.ignore_index}')
        valid = (p >= 0) & (p < self.num_classes)
        n = self.num_classes
        self.matrix += np.bincount(g[valid] * n + p[valid], minlength=n * n).reshape(n, n)
        # predictions outside the class range (e.g. 255 in a pseudo-mask) are misses of the true class
        self.missed += np.bincount(g[~valid], minlength=n)
        return self

    def merge(self, other: 'SegConfusion') -> 'SegConfusion':
        """Add another accumulator's counts (e.g. from another process)."""
        self.matrix += other.matrix
        self.missed += other.missed
        return self

    def compute(self) -> Dict[str, object]:
        """Metrics as fractions.

        Returns:
            dict with ``iou`` (per class, NaN where absent from GT and prediction), ``miou``, ``acc`` (pixel
            accuracy), ``macc`` (mean per-class recall), ``precision`` and ``recall`` per class, ``pixels``.
        """
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt_area = m.sum(1) + self.missed
        pred_area = m.sum(0)
        union = gt_area + pred_area - tp
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = np.where(union > 0, tp / union, np.nan)
            recall = np.where(gt_area > 0, tp / gt_area, np.nan)
            precision = np.where(pred_area > 0, tp / pred_area, np.nan)
        total = gt_area.sum()
        return {
            'iou': iou.tolist(),
            'miou': float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan'),
            'acc': float(tp.sum() / total) if total else float('nan'),
            'macc': float(np.nanmean(recall)) if np.isfinite(recall).any() else float('nan'),
            'precision': precision.tolist(),
            'recall': recall.tolist(),
            'pixels': int(total),
        }
