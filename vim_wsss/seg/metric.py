"""mmseg ``IoUMetric`` that also returns per-class IoU (``IoU.<class>``), so reports need no log parsing."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """Same as ``IoUMetric`` (percentages, nan-mean over classes present); adds ``IoU.<class>`` entries."""

    def compute_metrics(self, results: List) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        inter, union = (sum(r[i] for r in results) for i in (0, 1))
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = (inter.double() / union.double()).numpy() * 100
        for name, value in zip(self.dataset_meta['classes'], iou):
            metrics[f'IoU.{name}'] = float(value)
        return metrics
