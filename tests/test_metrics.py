"""The set-level confusion-matrix metric, cross-checked against mmseg's IoUMetric."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vim_wsss.metrics import SegConfusion


def _random_pairs(rng, n=6):
    """GT uses classes 0..14 (+255); predictions also hit 15..17 (predicted-only) and 255; 18..20 never appear."""
    pairs = []
    for _ in range(n):
        shape = tuple(rng.integers(8, 30, 2))
        gt = rng.integers(0, 15, shape)
        gt[rng.random(shape) < 0.1] = 255
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, 18, shape))
        pred[rng.random(shape) < 0.03] = 255
        pairs.append((pred, gt))
    return pairs


def _mmseg_reference(pairs, num_classes):
    from vim_wsss.compat import ensure_mmseg

    ensure_mmseg()
    from mmseg.evaluation.metrics import IoUMetric

    areas = [IoUMetric.intersect_and_union(torch.as_tensor(p), torch.as_tensor(g), num_classes, 255) for p, g in pairs]
    totals = [sum(a[i] for a in areas) for i in range(4)]
    return IoUMetric.total_area_to_metrics(*totals, ['mIoU'])  # unrounded fractions, unlike compute_metrics


def test_matches_mmseg_iou_metric():
    rng = np.random.default_rng(0)
    pairs = _random_pairs(rng)
    ours = SegConfusion(21)
    for k, (pred, gt) in enumerate(pairs):  # numpy and torch inputs, any shape
        ours.update(torch.as_tensor(pred) if k % 2 else pred, gt.reshape(-1) if k % 3 == 0 else gt)
    ref = _mmseg_reference([(p.reshape(-1), g.reshape(-1)) for p, g in pairs], 21)
    got = ours.compute()
    iou_ref = np.asarray(ref['IoU'], dtype=np.float64)
    assert np.isnan(iou_ref[18:]).all() and (iou_ref[15:18] == 0).all()  # the cases the convention is about
    np.testing.assert_allclose(got['iou'], iou_ref, rtol=1e-6, equal_nan=True)  # mmseg accumulates in float32
    assert got['miou'] == pytest.approx(float(np.nanmean(iou_ref)), rel=1e-6)
    assert got['acc'] == pytest.approx(float(ref['aAcc']), rel=1e-6)
    assert got['macc'] == pytest.approx(float(np.nanmean(np.asarray(ref['Acc'], dtype=np.float64))), rel=1e-6)


def test_matches_iou_metric_percentages():
    """The public IoUMetric path (process + compute_metrics, percentages rounded to 2 dp)."""
    from vim_wsss.compat import ensure_mmseg

    ensure_mmseg()
    from mmengine.structures import PixelData
    from mmseg.evaluation.metrics import IoUMetric
    from mmseg.structures import SegDataSample

    pairs = _random_pairs(np.random.default_rng(1), n=3)
    metric = IoUMetric(ignore_index=255, iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=[str(c) for c in range(21)])
    ours = SegConfusion(21)
    for pred, gt in pairs:
        sample = SegDataSample()
        sample.pred_sem_seg = PixelData(data=torch.as_tensor(pred)[None])
        sample.gt_sem_seg = PixelData(data=torch.as_tensor(gt)[None])
        metric.process([], [sample.to_dict()])
        ours.update(pred, gt)
    ref = metric.compute_metrics(metric.results)
    got = ours.compute()
    assert ref['mIoU'] == pytest.approx(100 * got['miou'], abs=0.006)
    assert ref['aAcc'] == pytest.approx(100 * got['acc'], abs=0.006)


def test_ignore_absent_and_predicted_only_classes():
    m = SegConfusion(4)
    m.update(np.array([0, 1, 3, 3]), np.array([0, 1, 255, 1]))
    out = m.compute()
    assert out['iou'][0] == 1.0 and out['iou'][1] == 0.5 and np.isnan(out['iou'][2]) and out['iou'][3] == 0.0
    assert out['miou'] == pytest.approx(0.5)
    assert out['pixels'] == 3 and out['acc'] == pytest.approx(2 / 3)
    assert out['recall'][1] == 0.5 and out['precision'][3] == 0.0 and np.isnan(out['precision'][2])


def test_pseudo_ignore_prediction_counts_as_miss_merge_and_reset():
    a, b = SegConfusion(3), SegConfusion(3)
    a.update(np.array([255, 1]), np.array([1, 1]))
    b.update(torch.tensor([[2]]), torch.tensor([[2]]))
    out = a.merge(b).compute()
    assert out['iou'][1] == 0.5 and out['iou'][2] == 1.0 and np.isnan(out['iou'][0])
    assert a.reset().compute()['pixels'] == 0 and np.isnan(a.compute()['miou'])


def test_bad_inputs():
    m = SegConfusion(3)
    with pytest.raises(ValueError, match='pixels'):
        m.update(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match='ground truth values'):
        m.update(np.zeros(2), np.array([0, 7]))
