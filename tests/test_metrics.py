"""The set-level confusion-matrix metric, cross-checked against mmseg's IoUMetric."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vim_wsss.metrics import SegConfusion


def _random_pairs(rng, n=5, classes=21):
    pairs = []
    for _ in range(n):
        gt = rng.integers(0, classes, (24, 20))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, classes, gt.shape))
        pred[pred == 255] = 0
        pairs.append((pred, gt))
    return pairs


def test_matches_mmseg_iou_metric():
    from vim_wsss.compat import ensure_mmseg

    ensure_mmseg()
    from mmseg.evaluation.metrics import IoUMetric

    rng = np.random.default_rng(0)
    pairs = _random_pairs(rng, classes=21)
    ours = SegConfusion(21)
    results = []
    for pred, gt in pairs:
        ours.update(pred, gt)
        results.append(IoUMetric.intersect_and_union(torch.as_tensor(pred), torch.as_tensor(gt), 21, 255))
    inter, union, pred_area, label_area = (sum(r[i] for r in results) for i in range(4))
    ref = IoUMetric.total_area_to_metrics(inter, union, pred_area, label_area, ['mIoU'])
    got = ours.compute()
    np.testing.assert_allclose(got['iou'], np.asarray(ref['IoU']), rtol=1e-6)  # mmseg accumulates in float32
    assert got['miou'] == pytest.approx(float(np.nanmean(np.asarray(ref['IoU']))), rel=1e-6)
    assert got['acc'] == pytest.approx(float(ref['aAcc']), rel=1e-6)


def test_ignore_absent_and_predicted_only_classes():
    m = SegConfusion(4)
    m.update(np.array([0, 1, 3, 3]), np.array([0, 1, 255, 1]))
    out = m.compute()
    assert out['iou'][0] == 1.0 and out['iou'][1] == 0.5 and np.isnan(out['iou'][2]) and out['iou'][3] == 0.0
    assert out['miou'] == pytest.approx(0.5)
    assert out['pixels'] == 3


def test_pseudo_ignore_prediction_counts_as_miss_and_merge():
    a, b = SegConfusion(3), SegConfusion(3)
    a.update(np.array([255, 1]), np.array([1, 1]))
    b.update(np.array([2]), np.array([2]))
    out = a.merge(b).compute()
    assert out['iou'][1] == 0.5 and out['iou'][2] == 1.0
