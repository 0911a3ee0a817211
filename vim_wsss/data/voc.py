"""Pascal VOC 2012 (+ SBD ``train_aug``) conventions: classes, palette, split lists, image-level labels, mask IO.

Layout (all WSSS repos and mmseg)::

    <root>/JPEGImages/<name>.jpg
    <root>/SegmentationClass/<name>.png        VOC GT (palette PNG, indices 0..20, 255 = ignore)
    <root>/SegmentationClassAug/<name>.png     SBD-augmented GT (train_aug + val)
    <root>/ImageSets/Segmentation/{train,train_aug|trainaug,val}.txt

Image-level labels in memory are always ``dict[str, np.ndarray]`` of shape ``(20,)`` float32 multi-hot (no
background), as ToCo's ``cls_labels_onehot.npy``; IRN's ``cls_labels.npy`` (int keys) reads into the same form.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Union

import numpy as np
from PIL import Image

from vim_wsss.utils import atomic_write

PathLike = Union[str, 'os.PathLike[str]']

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
)
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_INDEX = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
SPLIT_DIR = Path('ImageSets') / 'Segmentation'
SPLIT_ALIASES = {'train_aug': ('train_aug', 'trainaug'), 'trainaug': ('trainaug', 'train_aug')}


class DataError(ValueError):
    """Bad user data: the message names the file and the fix."""


def _voc_palette() -> List[int]:
    """The standard VOC colour map (bit-interleaved), 256 * 3 ints."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_PALETTE = _voc_palette()


def check_root(root: PathLike) -> Path:
    """The VOC root as a Path; FileNotFoundError explaining the layout if it or JPEGImages is missing."""
    root = Path(root)
    if not (root / 'JPEGImages').is_dir():
        raise FileNotFoundError(
            f'VOC data root {root} has no JPEGImages/ folder. Point data_root at VOCdevkit/VOC2012 (with JPEGImages/, '
            f'SegmentationClass[Aug]/, ImageSets/Segmentation/*.txt), or generate the synthetic dataset with '
            f'`vim-wsss make-synthetic --out DIR`.')
    return root


def split_path(root: PathLike, split: str) -> Path:
    """Path of a split list, accepting ``train_aug.txt`` and mmseg's ``trainaug.txt``."""
    root = Path(root)
    for name in SPLIT_ALIASES.get(split, (split,)):
        path = root / SPLIT_DIR / f'{name}.txt'
        if path.is_file():
            return path
    raise FileNotFoundError(
        f'split list {root / SPLIT_DIR / (split + ".txt")} not found. Expected one image name per line under '
        f'{root / SPLIT_DIR}/ (train.txt, train_aug.txt or trainaug.txt, val.txt); check the split name in the config.')


def read_split(root: PathLike, split: str) -> List[str]:
    """Image names of a split, as str (never parsed as numbers).

    Accepts one name per line (VOC, ToCo, mmseg) and DeepLab-style lines
    ``/JPEGImages/<name>.jpg /SegmentationClassAug/<name>.png`` (the first column's file stem is the name).
    """
    path = split_path(root, split)
    names = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f'split list {path} is empty.')
    return names


def _canonical_name(key: object) -> str:
    if isinstance(key, (int, np.integer)):  # IRN format: 2007000032 -> '2007_000032'
        s = str(int(key))
        return f'{s[:4]}_{s[4:]}'
    return str(key)


def load_cls_labels(path: PathLike) -> Dict[str, np.ndarray]:
    """Read image-level labels from ToCo's ``cls_labels_onehot.npy`` (str keys) or IRN's ``cls_labels.npy``.

    Returns:
        ``{name: (20,) float32 multi-hot}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'class-label file {path} not found (expected cls_labels_onehot.npy, ToCo format).')
    try:
        raw = np.load(path, allow_pickle=True).item()
    except Exception as err:
        raw = err
    if not isinstance(raw, dict):
        raise DataError(f'{path} is not a pickled label dict {{name: (20,) multi-hot}} as ToCo\'s '
                        f'cls_labels_onehot.npy or IRN\'s cls_labels.npy ({raw!r:.80}); regenerate it with '
                        f'vim_wsss.data.voc.save_cls_labels.')
    labels = {}
    for key, value in raw.items():
        value = np.asarray(value, dtype=np.float32).reshape(-1)
        if value.shape != (20,):
            raise DataError(f'{path}: label of {key!r} has shape {value.shape}, expected (20,) (no background).')
        labels[_canonical_name(key)] = value
    return labels


def save_cls_labels(path: PathLike, labels: Dict[str, np.ndarray]) -> Path:
    """Write labels in ToCo's ``cls_labels_onehot.npy`` format (pickled dict, str keys, (20,) float32)."""
    data = {str(k): np.asarray(v, dtype=np.float32) for k, v in labels.items()}
    return atomic_write(path, lambda tmp: np.save(tmp, data, allow_pickle=True))


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """(20,) multi-hot of the object classes present in a mask (0 and 255 ignored)."""
    present = np.unique(mask)
    label = np.zeros(20, dtype=np.float32)
    label[[c - 1 for c in present if 1 <= c <= 20]] = 1.0
    return label


def labels_from_masks(root: PathLike, names: Iterable[str], mask_dir: str = 'SegmentationClassAug'
                      ) -> Dict[str, np.ndarray]:
    """Image-level labels derived from GT masks."""
    root = Path(root)
    return {n: labels_from_mask(read_mask(root / mask_dir / f'{n}.png')) for n in names}


def read_image(path: PathLike) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``; DataError naming the file if it is missing, truncated or not an image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'image {path} is listed in the split but missing; restore it or remove it from '
                                f'the split list.')
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert('RGB'))
    except Exception as err:
        raise DataError(f'cannot decode image {path} ({err}); the file is corrupt or truncated: re-extract it or '
                        f'drop it from the split (or pass skip_bad=True).') from err


def read_mask(path: PathLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class-index mask ``(H, W)`` uint8 with values in ``{0..num_classes-1, 255}``.

    Palette PNGs are read as indices. RGB colour-map PNGs and out-of-range values raise DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'mask {path} not found; check mask_dir (SegmentationClass / SegmentationClassAug / '
                                f'a pseudo-mask folder).')
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            mask = np.asarray(img)
    except Exception as err:
        raise DataError(f'cannot decode mask {path} ({err}).') from err
    if mode in ('RGB', 'RGBA') or mask.ndim != 2:
        raise DataError(f'mask {path} is a {mode} image: a colour map (e.g. a *_rgb prediction) cannot be used as '
                        f'labels. Use single-channel class-index PNGs (palette or grayscale; 0..20, 255 = ignore).')
    if mode not in ('P', 'L'):
        raise DataError(f'mask {path} has PIL mode {mode}; save it as an 8-bit class-index PNG (palette or '
                        f'grayscale; 0..20, 255 = ignore).')
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_classes), IGNORE_INDEX])
    if bad.size:
        raise DataError(f'mask {path} has label values {bad.tolist()} outside 0..{num_classes - 1} and 255; '
                        f'regenerate it as a class-index PNG.')
    return mask.astype(np.uint8)


def save_mask(path: PathLike, mask: np.ndarray) -> Path:
    """Write a class-index mask ``(H, W)`` (integer values 0..255) as a VOC palette PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f'mask for {path} must be (H, W), got shape {mask.shape}')
    if mask.size and (not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool
                      or mask.min() < 0 or mask.max() > 255):
        raise ValueError(f'mask for {path} must hold integers in 0..255, got dtype {mask.dtype} '
                         f'range [{mask.min()}, {mask.max()}]')
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    img.putpalette(VOC_PALETTE)  # 'L' -> 'P' with the VOC colours, indices unchanged
    return atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))


def check_pair(image: np.ndarray, mask: np.ndarray, name: str) -> None:
    """DataError if image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f'{name}: image is {image.shape[:2]} but its mask is {mask.shape[:2]}; the mask must have '
                        f'the image size.')
