"""Stage 2 entry points: train an mmseg model on pseudo-masks and evaluate it on GT (TTA and dense CRF optional)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from mmengine.config import Config

from vim_wsss.compat.checkpoint import patch_mmengine_io
from vim_wsss.utils import atomic_save_json, config_from_file

PathLike = Union[str, 'os.PathLike[str]']
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def load_config(cfg: Union[PathLike, Config], work_dir: Optional[PathLike] = None,
                cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """Config from a file (or a copy of one) with ``--cfg-options``-style overrides and the work dir applied."""
    cfg = config_from_file(cfg, 'configs/seg/') if not isinstance(cfg, Config) else Config(cfg.to_dict())
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('work_dirs') / Path(cfg.filename or 'seg').stem)
    return cfg


def data_options(data_root: PathLike, pseudo_dir: Optional[PathLike] = None, train_split: Optional[str] = None,
                 val_mask_dir: Optional[str] = None) -> Dict[str, Any]:
    """cfg_options pointing every dataloader at ``data_root`` and the train set at ``pseudo_dir``.

    Args:
        data_root: VOC root.
        pseudo_dir: pseudo-mask folder (absolute, or relative to ``data_root``) used as training targets.
        train_split: list name for training (e.g. 'train_aug').
        val_mask_dir: GT folder for val/test (e.g. 'SegmentationClassAug').
    """
    opts: Dict[str, Any] = {f'{loader}.dataset.data_root': str(data_root) for loader in LOADERS}
    if pseudo_dir is not None:
        opts['train_dataloader.dataset.data_prefix.seg_map_path'] = str(Path(pseudo_dir).resolve())
    if train_split is not None:
        opts['train_dataloader.dataset.ann_file'] = f'ImageSets/Segmentation/{train_split}.txt'
    if val_mask_dir is not None:
        for loader in LOADERS[1:]:
            opts[f'{loader}.dataset.data_prefix.seg_map_path'] = val_mask_dir
    return opts


def _runner(cfg: Config):
    from mmengine.runner import Runner

    from vim_wsss.compat import ensure_mmseg

    ensure_mmseg()
    return Runner.from_cfg(cfg)


def last_checkpoint(work_dir: PathLike) -> Path:
    """Path recorded by mmengine's CheckpointHook in ``<work_dir>/last_checkpoint``."""
    marker = Path(work_dir) / 'last_checkpoint'
    if not marker.is_file():
        raise FileNotFoundError(f'no checkpoint recorded in {work_dir} (training did not save one)')
    return Path(marker.read_text().strip())


def train_seg(cfg: Union[PathLike, Config], work_dir: PathLike, cfg_options: Optional[Dict[str, Any]] = None,
              resume: bool = False, launcher: str = 'none') -> Path:
    """Train with mmengine's Runner; returns the last checkpoint. ``resume=True`` continues an interrupted run."""
    cfg = load_config(cfg, work_dir, cfg_options)
    cfg.launcher = launcher
    if resume:
        cfg.resume = True
        cfg.load_from = None  # mmengine resumes from <work_dir>/last_checkpoint
    with patch_mmengine_io():  # safe resume of our own checkpoints (torch >= 2.6), atomic saves
        _runner(cfg).train()
    return last_checkpoint(cfg.work_dir)


def test_seg(cfg: Union[PathLike, Config], checkpoint: PathLike, work_dir: PathLike,
             cfg_options: Optional[Dict[str, Any]] = None, tta: bool = False, crf: bool = False,
             out_dir: Optional[PathLike] = None) -> Dict[str, float]:
    """Evaluate a checkpoint on the config's test set.

    Args:
        cfg: seg config (file or Config).
        checkpoint: weights to test.
        work_dir: where logs and ``test_metrics.json`` go.
        cfg_options: overrides (e.g. from :func:`data_options`).
        tta: multi-scale + flip test-time augmentation (the config's ``tta_pipeline`` / ``tta_model``).
        crf: dense-CRF post-processing of the softmax (single process).
        out_dir: write predictions there as index PNGs.

    Returns:
        ``{'mIoU': %, 'aAcc': %, 'IoU.<class>': %, ...}`` (percentages, as mmseg reports them).
    """
    cfg = load_config(cfg, work_dir, cfg_options)
    cfg.load_from = None  # loaded strictly below, through the project's safe reader
    cfg.model.backbone.pretrained = None  # the checkpoint holds every weight; do not read another file
    if tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if out_dir is not None and not crf:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        cfg.test_evaluator['output_dir'] = str(out_dir)
    runner = _runner(cfg)
    load_segmentor(runner.model, checkpoint)
    metrics = _crf_test(runner, out_dir) if crf else dict(runner.test())
    metrics = {k: float(v) for k, v in metrics.items()}
    atomic_save_json(Path(cfg.work_dir) / 'test_metrics.json', metrics)
    return metrics


def load_segmentor(model: torch.nn.Module, checkpoint: PathLike) -> None:
    """Load a train-seg checkpoint into the Runner's model, refusing one whose keys or shapes do not fit.

    The model may be wrapped (TTA / DDP: ``.module``). mmengine's own ``load_from`` only logs missing keys and
    would evaluate random weights; this raises a :class:`~vim_wsss.models.CheckpointError` listing them.
    """
    from vim_wsss.models.checkpoint import CheckpointError, check_state_dict, read_checkpoint

    while hasattr(model, 'module'):
        model = model.module
    saved = read_checkpoint(checkpoint)
    state = saved.get('state_dict', saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'checkpoint {checkpoint} holds no state dict of tensors; pass a train-seg checkpoint '
                              f'(work_dir/iter_*.pth).')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    check_state_dict(model, state, checkpoint)
    model.load_state_dict(state)


def _crf_test(runner, out_dir: Optional[PathLike]) -> Dict[str, float]:
    """Test loop with dense-CRF post-processing of each prediction's softmax."""
    from tqdm import tqdm

    from vim_wsss.data.voc import VOC_CLASSES, read_image, save_mask
    from vim_wsss.metrics import SegConfusion
    from vim_wsss.wsss.refine import crf_refine

    model = runner.model.eval()
    confusion = SegConfusion(len(VOC_CLASSES))
    for batch in tqdm(runner.test_dataloader, desc='test + CRF'):
        with torch.no_grad():
            samples = model.test_step(batch)
        for sample in samples:
            probs = torch.softmax(sample.seg_logits.data.float(), dim=0).cpu().numpy()
            image = read_image(sample.img_path)
            pred = crf_refine(image, probs).argmax(0).astype(np.uint8)
            confusion.update(pred, sample.gt_sem_seg.data.squeeze(0).cpu().numpy())
            if out_dir is not None:
                save_mask(Path(out_dir) / f'{Path(sample.img_path).stem}.png', pred)
    result = confusion.compute()
    metrics = {'mIoU': 100 * result['miou'], 'aAcc': 100 * result['acc'], 'mAcc': 100 * result['macc']}
    metrics.update({f'IoU.{c}': 100 * v for c, v in zip(VOC_CLASSES, result['iou'])})
    return metrics
