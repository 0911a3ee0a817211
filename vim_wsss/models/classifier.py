"""Multi-label image classifier on the class token (stage 1 of WSSS), as an mmengine model, plus its metric.

``MultiLabelClassifier`` wraps a vim_wsss backbone (ViM or DeiT, built by :func:`vim_wsss.models.create_model` with a
20-way head on the class token) and follows mmengine's ``BaseModel`` contract::

    forward(img, label=None, mode='tensor' | 'loss' | 'predict', **kw)
        'tensor'  -> logits (B, num_classes)
        'loss'    -> dict(loss=...)   multilabel soft-margin (ToCo) or BCE-with-logits
        'predict' -> list over the batch of dict(logits=(C,), label=(C,) or None, name=str or None)

``MultiLabelMetric`` (mmengine ``BaseMetric``, prefix ``cls``) turns the predictions into ``cls/mAP`` (per-class
average precision averaged over classes with at least one positive, percent) and ``cls/f1_micro`` /
``cls/f1_macro`` at logit threshold 0 (percent). ``ClsMetricsHook`` appends every validation result to
``<work_dir>/cls_metrics.json`` (atomic), where the pipeline reads it. All three are registered in mmengine's root
registries (``MODELS``, ``METRICS``, ``HOOKS``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import HOOKS, METRICS, MODELS

__all__ = ['MultiLabelClassifier', 'MultiLabelMetric', 'ClsMetricsHook', 'average_precision', 'multilabel_scores',
           'build_backbone', 'LOSSES']

LOSSES = ('multilabel_soft_margin', 'bce')
METRICS_FILE = 'cls_metrics.json'


def build_backbone(backbone: Dict[str, Any], num_classes: int) -> nn.Module:
    """Backbone from ``dict(name=..., pretrained=None | path, **kwargs)`` with a ``num_classes`` head.

    Official 1000-class checkpoints lose their head in the family loaders; the new head is freshly initialised.
    """
    from vim_wsss.models import create_model

    cfg = dict(backbone)
    if 'name' not in cfg:
        raise ValueError(f"backbone config needs a 'name' (e.g. 'vim_small_patch16_224'), got {cfg}")
    name = cfg.pop('name')
    pretrained = cfg.pop('pretrained', None)
    return create_model(name, pretrained=pretrained or None, num_classes=num_classes, **cfg)


@MODELS.register_module()
class MultiLabelClassifier(BaseModel):
    """Class-token multi-label classifier.

    Args:
        backbone: ``dict(name=<registered backbone>, pretrained=None | path, **model kwargs)``; ``pretrained`` is an
            official Vim / DeiT file, a plain state dict or a classifier checkpoint, loaded when the model is built
            (the loaded backbone is marked initialised, so mmengine's ``init_weights()`` keeps it).
        num_classes: outputs (20 for VOC, no background).
        loss: 'multilabel_soft_margin' (ToCo) or 'bce'.
        data_preprocessor: mmengine data preprocessor config (default: moves tensors to the device).
        init_cfg: mmengine init config (unused by default; backbones initialise themselves).
    """

    def __init__(self, backbone: Dict[str, Any], num_classes: int = 20, loss: str = 'multilabel_soft_margin',
                 data_preprocessor: Optional[Dict[str, Any]] = None, init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if loss not in LOSSES:
            raise ValueError(f'loss must be one of {LOSSES}, got {loss!r}')
        self.num_classes = num_classes
        self.loss_name = loss
        self.backbone = build_backbone(backbone, num_classes)

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C)`` against multi-hot labels ``(B, C)``."""
        label = label.to(logits.dtype)
        if self.loss_name == 'bce':
            return F.binary_cross_entropy_with_logits(logits, label)
        return F.multilabel_soft_margin_loss(logits, label)

    def forward(self, img: torch.Tensor, label: Optional[torch.Tensor] = None, mode: str = 'tensor',
                name: Optional[Sequence[str]] = None, **kwargs: Any) -> Union[torch.Tensor, Dict[str, torch.Tensor],
                                                                              List[Dict[str, Any]]]:
        """See the module docstring. ``img``: ``(B, 3, H, W)`` normalised; ``label``: ``(B, C)`` multi-hot."""
        logits = self.backbone(img)
        if mode == 'tensor':
            return logits
        if mode == 'loss':
            if label is None:
                raise ValueError("mode='loss' needs labels")
            return dict(loss=self.loss(logits, label))
        if mode == 'predict':
            out = []
            for i in range(logits.shape[0]):
                out.append(dict(logits=logits[i].detach().float().cpu(),
                                label=None if label is None else label[i].detach().float().cpu(),
                                name=None if name is None else name[i]))
            return out
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated AP of one class: mean precision at the rank of every positive (ties broken by order).

    Args:
        scores: ``(N,)`` confidence.
        targets: ``(N,)`` 0/1.

    Returns:
        AP in [0, 1]; NaN when there is no positive.
    """
    targets = np.asarray(targets) > 0
    positives = int(targets.sum())
    if positives == 0:
        return float('nan')
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind='stable')
    hits = targets[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / positives)


def multilabel_scores(logits: np.ndarray, targets: np.ndarray, threshold: float = 0.0) -> Dict[str, float]:
    """mAP and F1 (percent) of ``(N, C)`` logits against ``(N, C)`` multi-hot targets.

    mAP averages the per-class AP over classes with at least one positive. A class is predicted when its logit is
    above ``threshold``. ``f1_micro`` pools all decisions; ``f1_macro`` averages per-class F1 over classes with a
    positive target or prediction.
    """
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets) > 0
    aps = [average_precision(logits[:, c], targets[:, c]) for c in range(logits.shape[1])]
    preds = logits > threshold
    tp = (preds & targets).sum(0).astype(np.float64)
    fp = (preds & ~targets).sum(0).astype(np.float64)
    fn = (~preds & targets).sum(0).astype(np.float64)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1.0)
    seen = (tp + fp + fn) > 0
    macro = float(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen]))) if seen.any() else float('nan')
    valid = [a for a in aps if np.isfinite(a)]
    return dict(mAP=100.0 * float(np.mean(valid)) if valid else float('nan'), f1_micro=100.0 * float(micro),
                f1_macro=100.0 * macro, num_images=float(len(logits)))


@METRICS.register_module()
class MultiLabelMetric(BaseMetric):
    """mAP / micro-F1 / macro-F1 over a validation set (see :func:`multilabel_scores`).

    Args:
        threshold: logit threshold of a positive decision (0 = probability 0.5).
        collect_device, prefix: as mmengine's ``BaseMetric`` (default prefix 'cls').
    """

    default_prefix = 'cls'

    def __init__(self, threshold: float = 0.0, collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.threshold = threshold

    def process(self, data_batch: Any, data_samples: Sequence[Dict[str, Any]]) -> None:
        labels = None
        if isinstance(data_batch, dict) and data_batch.get('label') is not None:
            labels = data_batch['label']
        for i, sample in enumerate(data_samples):
            label = sample.get('label')
            if label is None and labels is not None:
                label = labels[i]
            if label is None:
                raise ValueError('MultiLabelMetric needs labels: the validation dataset must provide them.')
            self.results.append((np.asarray(sample['logits'], np.float32), np.asarray(label, np.float32)))

    def compute_metrics(self, results: List[Any]) -> Dict[str, float]:
        logits = np.stack([r[0] for r in results])
        targets = np.stack([r[1] for r in results])
        return multilabel_scores(logits, targets, self.threshold)


@HOOKS.register_module()
class ClsMetricsHook(Hook):
    """Append ``{'iter': n, **metrics}`` after each validation to ``<work_dir>/cls_metrics.json`` (atomic).

    Entries at or after the current iteration are dropped first: after a resume from an earlier checkpoint (a kill
    between a validation and the next save), the history holds each iteration once, from the run that continued.
    """

    priority = 'LOW'

    def after_val_epoch(self, runner: Any, metrics: Optional[Dict[str, float]] = None) -> None:
        from vim_wsss.utils import atomic_save_json

        if not metrics or runner.rank != 0:
            return
        path = Path(runner.work_dir) / METRICS_FILE
        history = json.loads(path.read_text()) if path.is_file() else []
        history = [h for h in history if h['iter'] < runner.iter]  # a resumed run re-validates these
        history.append(dict(iter=int(runner.iter), **{k: float(v) for k, v in metrics.items()}))
        atomic_save_json(path, history)
