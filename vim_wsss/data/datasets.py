"""VOC-format datasets for classification (image + multi-hot label) and segmentation (image + mask).

Both are registered in mmengine's ``DATASETS`` registry and :func:`collate` in ``FUNCTIONS``, so configs can name
them::

    train_dataloader = dict(
        dataset=dict(type='VOCClsDataset', root='data/VOC2012', split='train_aug',
                     transform=dict(kind='train', crop_size=448)),
        collate_fn=dict(type='voc_collate'), ...)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from mmengine.registry import DATASETS, FUNCTIONS
from torch.utils.data import Dataset

from vim_wsss.data.transforms import eval_transform, train_transform
from vim_wsss.data.voc import (DataError, MissingFileError, check_pair, check_root, labels_from_masks, load_cls_labels,
                               read_image, read_mask, read_split)

PathLike = Union[str, 'os.PathLike[str]']
TransformLike = Union[Callable[..., Dict[str, Any]], Dict[str, Any], None]
logger = logging.getLogger(__name__)


def build_transform(transform: TransformLike) -> Optional[Callable[..., Dict[str, Any]]]:
    """A callable transform from a callable, None, or ``dict(kind='train'|'eval', **kwargs)`` (config form)."""
    if transform is None or callable(transform):
        return transform
    cfg = dict(transform)
    kind = cfg.pop('kind', 'eval')
    if kind == 'train':
        return train_transform(**cfg)
    if kind == 'eval':
        return eval_transform(**cfg)
    raise ValueError(f"transform kind must be 'train' or 'eval', got {kind!r}")


class _VOCBase(Dataset):
    """Shared listing and bad-file handling."""

    def __init__(self, root: PathLike, split: str, transform: TransformLike, skip_bad: bool):
        self.root = check_root(root)
        self.split = split
        self.names: List[str] = read_split(self.root, split)
        self.transform = build_transform(transform)
        self.skip_bad = skip_bad
        self.skipped: List[str] = []
        self._seeded_pid: Optional[int] = None

    def apply_transform(self, **arrays: np.ndarray) -> Dict[str, Any]:
        """Run the transform; an albumentations pipeline keeps its own RNG (seeded from OS entropy), so on first use
        in each process it is seeded from numpy's global RNG, which mmengine's ``randomness.seed`` and its
        per-worker ``worker_init_fn`` set: the same seed gives the same augmentations."""
        if hasattr(self.transform, 'set_random_seed') and self._seeded_pid != os.getpid():
            self.transform.set_random_seed(int(np.random.randint(2 ** 31 - 1)))
            self._seeded_pid = os.getpid()
        return self.transform(**arrays)

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, name: str) -> Path:
        return self.root / 'JPEGImages' / f'{name}.jpg'

    def _drop_bad(self, check: Callable[[str], None]) -> None:
        """With ``skip_bad``, drop names whose files fail ``check`` (warn once with the count)."""
        if not self.skip_bad:
            return
        kept = []
        for name in self.names:
            try:
                check(name)
                kept.append(name)
            except (DataError, FileNotFoundError) as err:
                self.skipped.append(name)
                logger.warning('skipping %s: %s', name, err)
        if self.skipped:
            logger.warning('%s/%s: skipped %d bad images of %d', self.root, self.split, len(self.skipped),
                           len(self.names))
        self.names = kept


@FUNCTIONS.register_module(name='voc_collate')
def collate(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Batch dataset items: tensors with equal shapes are stacked, everything else becomes a list.

    Args:
        batch: items of :class:`VOCClsDataset` / :class:`VOCSegDataset`.

    Returns:
        e.g. ``dict(img=(B, 3, H, W), label=(B, 20), name=[str] * B, ori_shape=[(H, W)] * B)`` for classification,
        ``mask=(B, H, W)`` long for segmentation (images of different sizes stay lists).
    """
    out: Dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


@DATASETS.register_module()
class VOCClsDataset(_VOCBase):
    """Images with image-level multi-hot labels.

    Args:
        root: VOC root (``JPEGImages/``, ``ImageSets/Segmentation/``, masks).
        split: split list name (``train``, ``train_aug``, ``val``, ...).
        transform: callable or ``dict(kind='train'|'eval', ...)`` (see :mod:`vim_wsss.data.transforms`).
        cls_labels: path of ``cls_labels_onehot.npy`` (default ``<root>/cls_labels_onehot.npy``) or a label dict.
        label_source: 'file' (cls_labels), 'masks' (derive from ``mask_dir``), or 'auto' (file if present).
        mask_dir: mask folder for ``label_source='masks'``.
        skip_bad: drop unreadable images (with a warning and a count in ``skipped``) instead of raising.

    Items: ``dict(img=(3, H, W) float, label=(20,) float, name=str, ori_shape=(H, W))``.
    """

    def __init__(self, root: PathLike, split: str, transform: TransformLike = None,
                 cls_labels: Union[PathLike, Dict[str, np.ndarray], None] = None, label_source: str = 'auto',
                 mask_dir: str = 'SegmentationClassAug', skip_bad: bool = False):
        super().__init__(root, split, transform, skip_bad)
        self.labels = self._load_labels(cls_labels, label_source, mask_dir)
        self._drop_bad(lambda n: read_image(self.image_path(n)))

    def _load_labels(self, cls_labels: Any, source: str, mask_dir: str) -> Dict[str, np.ndarray]:
        if isinstance(cls_labels, dict):
            labels = cls_labels
        else:
            path = Path(cls_labels) if cls_labels is not None else self.root / 'cls_labels_onehot.npy'
            if source == 'masks' or (source == 'auto' and not path.is_file()):
                return labels_from_masks(self.root, self.names, mask_dir)
            if source not in ('file', 'auto'):
                raise ValueError(f"label_source must be 'auto', 'file' or 'masks', got {source!r}")
            labels = load_cls_labels(path)
        missing = [n for n in self.names if n not in labels]
        if missing:
            raise DataError(f'{len(missing)} images of split {self.split!r} have no image-level label '
                            f'(first: {missing[0]}); regenerate cls_labels_onehot.npy or use label_source="masks".')
        return {n: labels[n] for n in self.names}

    def __getitem__(self, index: int) -> Dict[str, Any]:
        name = self.names[index]
        image = read_image(self.image_path(name))
        out = self.apply_transform(image=image) if self.transform is not None else {'image': image}
        img = out['image']
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        return dict(img=img, label=torch.from_numpy(self.labels[name].copy()), name=name,
                    ori_shape=tuple(image.shape[:2]))


@DATASETS.register_module()
class VOCSegDataset(_VOCBase):
    """Images with class-index masks (GT or pseudo-masks).

    Args:
        root: VOC root.
        split: split list name.
        mask_dir: mask folder relative to ``root`` (or absolute), e.g. ``SegmentationClassAug`` or a pseudo-mask
            folder.
        transform: callable or ``dict(kind=..., ...)``.
        skip_bad: drop pairs with unreadable files / bad labels / size mismatch instead of raising.

    Items: ``dict(img=(3, H, W) float, mask=(H, W) long, name=str, ori_shape=(H, W))``.
    """

    def __init__(self, root: PathLike, split: str, mask_dir: PathLike = 'SegmentationClassAug',
                 transform: TransformLike = None, skip_bad: bool = False):
        super().__init__(root, split, transform, skip_bad)
        self.mask_dir = Path(mask_dir) if Path(mask_dir).is_absolute() else self.root / mask_dir
        if not self.mask_dir.is_dir():
            raise MissingFileError(f'mask folder {self.mask_dir} not found (expected SegmentationClass, '
                                   f'SegmentationClassAug or a pseudo-mask folder).')
        self._drop_bad(self._load_pair)

    def _load_pair(self, name: str):
        image = read_image(self.image_path(name))
        mask = read_mask(self.mask_dir / f'{name}.png')
        check_pair(image, mask, self.image_path(name), self.mask_dir / f'{name}.png')
        return image, mask

    def __getitem__(self, index: int) -> Dict[str, Any]:
        name = self.names[index]
        image, mask = self._load_pair(name)
        if self.transform is not None:
            out = self.apply_transform(image=image, mask=mask)
            img, mask_t = out['image'], torch.as_tensor(out['mask']).long()
        else:
            img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
            mask_t = torch.from_numpy(mask).long()
        return dict(img=img, mask=mask_t, name=name, ori_shape=tuple(image.shape[:2]))
