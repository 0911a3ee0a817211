"""Stage functions of the classifier: train with mmengine's Runner, load the trained backbone for explanation.

``train_classifier`` is what ``vim-wsss train-cls`` and the pipeline call; it works single-process on CPU and under
``torchrun`` (``launcher='pytorch'`` in the config or ``cfg_options``): mmengine handles DDP. Validation metrics
(``cls/mAP``, ``cls/f1_micro``, ``cls/f1_macro``) are appended to ``<work_dir>/cls_metrics.json`` after every
evaluation; the best checkpoint (by ``cls/mAP``) and the last one live in ``work_dir``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

__all__ = ['train_classifier', 'load_classifier', 'load_config', 'set_data_root', 'find_checkpoint',
           'read_cls_metrics', 'backbone_spec', 'previous_run']

PathLike = Union[str, os.PathLike]
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
METRICS_NAME = 'cls_metrics.json'  # written by vim_wsss.models.classifier.ClsMetricsHook


def set_data_root(cfg: Any, root: str) -> None:
    """Point ``cfg.data_root`` and the ``root`` of every dataloader's dataset at ``root`` (in place).

    Needed because mmengine resolves ``root=data_root`` when the file is parsed: overriding the variable alone would
    not reach the datasets.
    """
    cfg.data_root = root
    for key in DATALOADERS:
        loader = cfg.get(key)
        if loader and loader.get('dataset') is not None:
            loader['dataset']['root'] = root


def load_config(cfg: Union[PathLike, Any], cfg_options: Optional[Dict[str, Any]] = None) -> Any:
    """An mmengine ``Config`` from a path or a Config, with ``cfg_options`` merged (``data_root`` re-points data)."""
    from mmengine.config import Config

    from vim_wsss.utils import config_from_file

    if isinstance(cfg, (str, os.PathLike)):
        cfg = config_from_file(cfg, 'configs/cls/')
    else:
        cfg = Config(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg))
    options = dict(cfg_options or {})
    root = options.pop('data_root', None)
    if options:
        cfg.merge_from_dict(options)
    if root is not None:
        set_data_root(cfg, str(root))
    return cfg


def _check_splits(cfg: Any) -> None:
    """Fail early, naming the list file, when a dataloader names a split that does not exist."""
    from vim_wsss.data.voc import check_root, split_path

    for key in DATALOADERS:
        loader = cfg.get(key)
        dataset = loader.get('dataset') if loader else None
        if dataset and dataset.get('type') == 'VOCClsDataset':
            root = check_root(dataset['root'])
            try:
                split_path(root, dataset['split'])
            except FileNotFoundError as err:
                raise FileNotFoundError(f'{key}.dataset: {err}') from err


def find_checkpoint(work_dir: PathLike, which: str = 'best') -> Path:
    """The best (by the ``save_best`` metric) or last checkpoint of a run; 'best' falls back to 'last'."""
    work_dir = Path(work_dir)
    if which == 'best':
        best = sorted(work_dir.glob('best_*.pth'), key=lambda p: p.stat().st_mtime)
        if best:
            return best[-1]
    marker = work_dir / 'last_checkpoint'
    if marker.is_file():
        path = Path(marker.read_text().strip())
        if path.is_file():
            return path
    found = sorted(work_dir.glob('iter_*.pth'), key=lambda p: int(p.stem.split('_')[-1]))
    if not found:
        raise FileNotFoundError(f'no checkpoint in {work_dir}; train first (vim-wsss train-cls CONFIG).')
    return found[-1]


def read_cls_metrics(work_dir: PathLike) -> list:
    """Validation history ``[{'iter': n, 'cls/mAP': ..., ...}, ...]`` of a run (empty if none)."""
    path = Path(work_dir) / METRICS_NAME
    return json.loads(path.read_text()) if path.is_file() else []


def previous_run(work_dir: PathLike) -> list:
    """Files a classifier run leaves in ``work_dir`` (checkpoints, their marker, the metrics history)."""
    work_dir = Path(work_dir)
    found = [work_dir / name for name in (METRICS_NAME, 'last_checkpoint') if (work_dir / name).is_file()]
    return found + sorted(work_dir.glob('iter_*.pth')) + sorted(work_dir.glob('best_*.pth'))


def _claim_work_dir(work_dir: PathLike, resume: bool, overwrite: bool) -> None:
    """A fresh run refuses a folder holding another run (its metrics would mix in) unless told to overwrite it."""
    found = previous_run(work_dir)
    if resume or not found:
        return
    if not overwrite:
        raise FileExistsError(f'{work_dir} holds a previous run ({", ".join(p.name for p in found[:3])}); pass '
                              f'--resume to continue it, --overwrite to start over, or choose another --work-dir.')
    for path in found:
        path.unlink()


def train_classifier(cfg: Union[PathLike, Any], work_dir: PathLike, cfg_options: Optional[Dict[str, Any]] = None,
                     resume: bool = False, overwrite: bool = False) -> Path:
    """Train the multi-label classifier of a config with mmengine's Runner.

    Args:
        cfg: config path (e.g. ``configs/cls/vim-mini_synthetic-64.py``) or an mmengine Config.
        work_dir: run folder (logs, JSON scalars, checkpoints, ``cls_metrics.json``).
        cfg_options: overrides (dotted keys); ``data_root`` re-points every dataset.
        resume: continue from the last checkpoint in ``work_dir``.
        overwrite: a fresh run (``resume=False``) deletes the checkpoints and metrics of a previous run in
            ``work_dir``; without it such a folder is refused (``FileExistsError``).

    Returns:
        Path of the best checkpoint (by ``cls/mAP``), or the last one when no validation ran.
    """
    from mmengine.runner import Runner

    from vim_wsss.compat.checkpoint import patch_mmengine_io

    cfg = load_config(cfg, cfg_options)
    cfg.work_dir = str(work_dir)
    _check_splits(cfg)
    _claim_work_dir(work_dir, resume, overwrite)
    if resume:
        cfg.resume = True
        cfg.load_from = None  # mmengine then finds <work_dir>/last_checkpoint
    with patch_mmengine_io():  # safe resume of our own checkpoints (torch >= 2.6), atomic saves
        Runner.from_cfg(cfg).train()
    return find_checkpoint(work_dir, 'best')


def backbone_spec(cfg: Union[PathLike, Any]) -> Dict[str, Any]:
    """``dict(name=..., num_classes=..., kwargs=...)`` of a classifier config's backbone."""
    cfg = load_config(cfg)
    backbone = dict(cfg.model.backbone)
    name = backbone.pop('name')
    backbone.pop('pretrained', None)
    return dict(name=name, num_classes=int(cfg.model.get('num_classes', 20)), kwargs=backbone)


def load_classifier(cfg: Union[PathLike, Any], checkpoint: PathLike, img_size: Optional[int] = None,
                    device: Union[str, torch.device] = 'cpu', trust: Optional[bool] = None) -> nn.Module:
    """The trained backbone (with its class head), ready for ``vim_wsss.explain``.

    Args:
        cfg: the classifier config the checkpoint was trained with.
        checkpoint: mmengine checkpoint (``state_dict`` with ``backbone.*`` keys) or a plain backbone state dict.
        img_size: build for another input size (pos_embed resampled), e.g. for multi-scale maps.
        device: target device.
        trust: allow types the safe loader refuses (can run code); None = ``VIM_WSSS_TRUST_CHECKPOINT``.

    Returns:
        The backbone in eval mode.

    Raises:
        vim_wsss.models.CheckpointError: the checkpoint cannot be read safely or does not fit the config's backbone
            (the message lists the missing / unexpected / mis-shaped keys, or the head mismatch).
    """
    from vim_wsss.models import create_model, load_weights

    spec = backbone_spec(cfg)
    kwargs = dict(spec['kwargs'])
    kwargs.pop('drop_path_rate', None)
    if img_size is not None:
        kwargs['img_size'] = img_size
    model = create_model(spec['name'], num_classes=spec['num_classes'], **kwargs)
    load_weights(model, checkpoint, new_head=False, trust=trust)
    return model.to(device).eval()
