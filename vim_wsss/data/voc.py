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
import re
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

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


_REGISTRY_PREFIX = re.compile(r'^(class `\w+` in [\w/.]+\.py: )+')


def _original_message(cls: type, message: object) -> object:
    """The message an exception was raised with, before torch's DataLoader or mmengine's registry rewrapped it.

    A DataLoader worker's error reaches the main process as ``cls("Caught <cls> in DataLoader worker process
    N.\\nOriginal Traceback ...\\n<module>.<cls>: <message>")``, and an error while mmengine builds a dataset as
    ``cls("class `<Dataset>` in <module path>.py: <message>")``; both give ``<message>`` (others are unchanged).
    """
    if not isinstance(message, str):
        return message
    if message.startswith('Caught ') and '\nOriginal Traceback' in message:
        marker = f'\n{cls.__module__}.{cls.__qualname__}: '
        start = message.rfind(marker)
        message = message[start + len(marker):].strip() if start >= 0 else message
    return _REGISTRY_PREFIX.sub('', message)


class _KeepsOwnMessage:
    """Rebuilt by torch's DataLoader from a worker's traceback (or by mmengine's registry), the exception keeps
    only its own message, so the console prints one line; the full text goes to ``wrapped_message``."""

    def __init__(self, message: object = '', *args: object):
        original = _original_message(type(self), message)
        self.wrapped_message = message if original != message else None
        super().__init__(original, *args)


class DataError(_KeepsOwnMessage, ValueError):
    """Bad user data: the message names the file and the fix."""


class MissingFileError(_KeepsOwnMessage, FileNotFoundError):
    """A file or folder the data needs is missing: the message names it and the fix."""


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
        raise MissingFileError(
            f'VOC data root {root} has no JPEGImages/ folder. Point data_root at VOCdevkit/VOC2012 (with JPEGImages/, '
            f'SegmentationClass[Aug]/, ImageSets/Segmentation/*.txt), or generate the synthetic dataset with '
            f'`vim-wsss make-synthetic --out DIR`.')
    return root


def split_path(root: PathLike, split: str) -> Path:
    """Path of a split list, accepting ``train_aug.txt`` and mmseg's ``trainaug.txt``."""
    root = Path(root)
    if not (root / SPLIT_DIR).is_dir():
        raise MissingFileError(f'VOC data root {root} has no {SPLIT_DIR}/ folder (the split lists); point --data-root '
                               f'(or data_root) at VOCdevkit/VOC2012, or generate the synthetic dataset with '
                               f'`vim-wsss make-synthetic --out DIR`.')
    for name in SPLIT_ALIASES.get(split, (split,)):
        path = root / SPLIT_DIR / f'{name}.txt'
        if path.is_file():
            return path
    raise MissingFileError(
        f'split list {root / SPLIT_DIR / (split + ".txt")} not found. Expected one image name per line under '
        f'{root / SPLIT_DIR}/ (train.txt, train_aug.txt or trainaug.txt, val.txt); check the split name (--split '
        f'or the config).')


def read_split(root: PathLike, split: str) -> List[str]:
    """Image names of a split (``<root>/ImageSets/Segmentation/<split>.txt``), as str; see :func:`read_name_list`."""
    return read_name_list(split_path(root, split))


def read_name_list(path: PathLike) -> List[str]:
    """Image names of a split list file, in file order, as str (never parsed as numbers).

    Accepts one name per line (VOC, ToCo, mmseg) and DeepLab-style lines
    ``/JPEGImages/<name>.jpg /SegmentationClassAug/<name>.png`` (the first column's file stem is the name).
    DataError if the list is empty or names an image twice (it would be trained and scored twice).
    """
    path = Path(path)
    names = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f'split list {path} is empty.')
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        shown = ', '.join(repeated[:5]) + (f' and {len(repeated) - 5} more' if len(repeated) > 5 else '')
        raise DataError(f'split list {path} lists {len(repeated)} name(s) more than once ({shown}); an image listed '
                        f'twice is trained on and scored twice: keep one line per image, e.g. '
                        f'`awk \'!seen[$1]++\' {path.name} > fixed.txt` and replace the list with it.')
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
        raise MissingFileError(f'class-label file {path} not found (expected cls_labels_onehot.npy, ToCo format).')
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


def read_image(path: PathLike, listed: bool = True) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from any 8/16-bit image (grey, palette, RGBA alpha dropped, 16 bit scaled by 1/257).

    MissingFileError / DataError naming the file if it is missing, truncated or not an image; ``listed``: the file
    comes from a split list (the fix offered is to restore it or drop its name), else from the user (check the path).
    """
    path = Path(path)
    if not path.is_file():
        if listed:
            raise MissingFileError(f'image {path} is listed in the split but missing; restore it or remove it from '
                                   'the split list.')
        raise MissingFileError(f'image {path} does not exist; check the path.')
    try:
        with Image.open(path) as img:
            deep = any(';16' in str(tile.args) for tile in img.tile)  # before load() empties img.tile
            img.load()
            return _rgb_uint8(img, path, deep)
    except DataError:
        raise
    except Exception as err:
        fix = 're-extract it or remove its name from the split list' if listed else 'pass an image file'
        raise DataError(f'cannot decode image {path} ({err}); the file is corrupt or truncated, or not an image: '
                        f'{fix}.') from err


def _rgb_uint8(img: Image.Image, path: Path, deep: bool) -> np.ndarray:
    """A loaded PIL image as RGB uint8 ``(H, W, 3)``; ``deep``: its file stores 16 bits per sample."""
    if img.mode.startswith('I'):  # 16-bit grey ('I;16*', or 'I' in older Pillow)
        return np.repeat(_scale16(np.asarray(img))[..., None], 3, axis=2)
    if deep:  # 16-bit colour: Pillow keeps only the high byte, so decode the full samples
        return _read_deep_colour(path)
    return np.asarray(img.convert('RGB'))


def _scale16(values: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) -> uint8 (0..255), rounded (65535 / 257 = 255)."""
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _read_deep_colour(path: Path) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of a 16-bit colour (or grey + alpha) image file."""
    import cv2

    data = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16:
        raise DataError(f'cannot decode the 16-bit image {path}; save it as an 8-bit RGB JPEG or PNG.')
    if data.ndim == 2:
        data = data[..., None]
    rgb = data[..., [2, 1, 0]] if data.shape[2] >= 3 else np.repeat(data[..., :1], 3, axis=2)  # BGR(A) / grey (A)
    return _scale16(rgb)


def read_mask(path: PathLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class-index mask ``(H, W)`` uint8 with values in ``{0..num_classes-1, 255}``.

    Palette PNGs are read as indices. RGB colour-map PNGs and out-of-range values raise DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f'mask {path} not found; check mask_dir (SegmentationClass / SegmentationClassAug / '
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
    check_mask_values(mask, path, num_classes)
    return mask.astype(np.uint8)


def check_mask_values(mask: np.ndarray, path: PathLike, num_classes: int = NUM_CLASSES) -> None:
    """DataError naming the file if a class-index mask ``(H, W)`` holds values outside 0..num_classes-1 and 255."""
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_classes), IGNORE_INDEX])
    if bad.size:
        shown = bad[:10].tolist() + (['...'] if bad.size > 10 else [])
        raise DataError(f'mask {path} has label values {shown} outside 0..{num_classes - 1} and 255; masks must be '
                        f'class-index PNGs (0 = background, 1..{num_classes - 1} = classes, 255 = ignore): '
                        f'regenerate it (pseudo-masks: vim-wsss make-pseudo) or fix the file.')


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


def check_pair(image: np.ndarray, mask: np.ndarray, image_path: PathLike, mask_path: PathLike) -> None:
    """DataError naming both files and their sizes if a mask ``(H, W)`` does not match its image ``(H', W', ...)``."""
    check_same_size(image.shape[:2], mask.shape[:2], f'image {image_path}', f'mask {mask_path}')


def read_mask_pair(mask_path: PathLike, gt_path: PathLike, num_classes: int = NUM_CLASSES
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """A mask (pseudo-mask, prediction) and its ground truth, ``(H, W)`` uint8 each, checked to have one size."""
    mask, gt = read_mask(mask_path, num_classes), read_mask(gt_path, num_classes)
    check_same_size(gt.shape, mask.shape, f'its ground truth {gt_path}', f'mask {mask_path}')
    return mask, gt


def check_same_size(size: Sequence[int], other: Sequence[int], what: str, other_what: str) -> None:
    """DataError if two ``(H, W)`` sizes differ, e.g. ``what='image a.jpg'``, ``other_what='mask a.png'``."""
    size, other = tuple(int(v) for v in size), tuple(int(v) for v in other)
    if size != other:
        raise DataError(f'{other_what} is {other[0]}x{other[1]} (HxW) but {what} is {size[0]}x{size[1]}; a mask '
                        f'must have the size of its image: regenerate the mask from this image (or replace the '
                        f'file with the right one).')
