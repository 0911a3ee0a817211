"""A deterministic synthetic dataset in the exact VOC 2012 layout — the embedded default for demos and tests.

Each of the 20 object classes is a distinct (shape x colour family) pair with its own texture: 5 shapes (disc,
square, triangle, cross, star) x 4 hue families, textured with stripes / dots / checker / plain. Images hold 1–3
objects (sometimes two of the same class), drawn over each other (later objects occlude earlier ones; masks show
what is visible) on cluttered textured backgrounds with distractors that belong to no class (rings and bars in
any colour, blobs in muted colours). Masks carry a 255 band along object boundaries, as VOC's do.
Same seed -> identical files; each image has its own generator so the result does not depend on order.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Dict, List, Tuple, Union

import cv2
import numpy as np

from vim_wsss.data.voc import NUM_CLASSES, SPLIT_DIR, VOC_CLASSES, labels_from_mask, save_cls_labels, save_mask
from vim_wsss.utils import atomic_save_bytes, atomic_save_json

PathLike = Union[str, 'os.PathLike[str]']
GENERATOR = 'vim_wsss.data.synthetic'
GENERATOR_VERSION = 2
MARKER = '.vim_wsss_synthetic'  # written first: the folder is ours (possibly unfinished)
OUTPUTS = ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug', 'ImageSets', 'cls_labels_onehot.npy',
           'README.txt', 'meta.json')
SHAPES = ('disc', 'square', 'triangle', 'cross', 'star')
HUE_NAMES = ('red', 'orange', 'yellow', 'lime', 'green', 'teal', 'azure', 'blue', 'violet', 'magenta')
HUES = tuple(18 * i for i in range(len(HUE_NAMES)))  # OpenCV's 0..180 hue scale, 18 apart (object jitter is +-4)
TEXTURES = ('plain', 'stripes')


def class_spec(cls: int) -> Tuple[str, int, str]:
    """(shape, hue, texture) of object class ``cls`` in 1..20.

    Each class has its own (hue, texture) pair, so colour and texture, which a patch embedding sees directly, tell
    classes apart; classes sharing a hue also differ in shape. Distractors reuse the hues with other shapes.
    """
    i = cls - 1
    hue, tex = i % len(HUES), i // len(HUES)
    return SHAPES[(i + tex) % len(SHAPES)], HUES[hue], TEXTURES[tex]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if shape == 'square':
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif shape == 'triangle':
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif shape == 'star':
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    elif shape == 'cross':
        w = 0.36
        base = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w),
                (-w, 1)]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:
        raise ValueError(shape)
    return np.array([(cx + r * x, cy + r * y) for x, y in pts], dtype=np.float32)


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape (anti-aliasing off so masks are exact)."""
    canvas = np.zeros((size, size), np.uint8)
    if shape == 'disc':
        axes = (max(1, int(round(r))), max(1, int(round(r * 0.8))))
        cv2.ellipse(canvas, (int(round(cx)), int(round(cy))), axes, math.degrees(angle), 0, 360, 1, -1)
    else:
        pts = np.round(_polygon(shape, cx, cy, r, angle)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1)
    return canvas.astype(bool)


def texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Brightness modulation in [0, 1], ``(size, size)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 9)
    angle = rng.uniform(0, math.pi)
    if kind == 'stripes':
        return (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    if kind == 'dots':
        return ((np.mod(xx, period) - period / 2) ** 2 + (np.mod(yy, period) - period / 2) ** 2
                < (period / 3.2) ** 2).astype(np.float32)
    if kind == 'checker':
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    return np.full((size, size), 0.5, np.float32)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    pix = np.uint8([[[int(h) % 180, int(s), int(v)]]])
    return cv2.cvtColor(pix, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Cluttered RGB float background: muted gradient + smoothed noise + muted blobs + class-free distractors."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = _hsv_to_rgb(rng.uniform(0, 180), rng.uniform(10, 60), rng.uniform(90, 200))
    grad = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None] * rng.uniform(20, 50)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), rng.uniform(1, 3))
    img = base + grad + noise * rng.uniform(10, 25)
    for _ in range(rng.integers(2, 6)):  # muted blobs
        m = shape_mask('disc', size, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, size / 4),
                       rng.uniform(0, math.pi))
        img[m] = _hsv_to_rgb(rng.uniform(0, 180), rng.uniform(10, 70), rng.uniform(60, 220))
    for _ in range(rng.integers(0, 3)):  # saturated distractors with shapes that are no class: rings and bars
        colour = tuple(float(c) for c in _hsv_to_rgb(rng.choice(HUES) + rng.uniform(-6, 6), 220, 220))
        centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        if rng.random() < 0.5:
            cv2.circle(img, centre, int(rng.uniform(4, size / 6)), colour, int(rng.integers(1, 3)))
        else:
            end = (int(centre[0] + rng.uniform(-size / 3, size / 3)), int(centre[1] + rng.uniform(-size / 3, size / 3)))
            cv2.line(img, centre, end, colour, int(rng.integers(1, 3)))
    return img


def render_image(size: int, rng: np.random.Generator, max_objects: int = 3, same_class_prob: float = 0.25,
                 band: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """One image and its mask.

    Returns:
        ``(image uint8 (size, size, 3) RGB, mask uint8 (size, size))`` with classes 1..20, 0 background, 255 band.
    """
    img = background(size, rng)
    label = np.zeros((size, size), np.uint8)
    n = int(rng.integers(1, max_objects + 1))
    classes: List[int] = []
    for k in range(n):
        if k > 0 and rng.random() < same_class_prob:
            cls = classes[-1]
        else:
            cls = int(rng.integers(1, NUM_CLASSES))
        classes.append(cls)
        shape, hue, tex = class_spec(cls)
        r = rng.uniform(0.35, 0.7) * size / 2  # object extent 35-70% of the side
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6), rng.uniform(r * 0.6, size - r * 0.6)
        m = shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        if m.sum() < 12:
            continue
        colour = _hsv_to_rgb(hue + rng.uniform(-4, 4), rng.uniform(170, 255), rng.uniform(170, 255))
        shade = 0.55 + 0.45 * texture(tex, size, rng)
        img[m] = colour * shade[m][:, None]
        label[m] = cls
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img, add_boundary_band(label, band)


def add_boundary_band(label: np.ndarray, width: int = 1) -> np.ndarray:
    """Set 255 on pixels within ``width`` px of a boundary between different labels (VOC-style band)."""
    if width <= 0:
        return label
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    hi = cv2.dilate(label, kernel)
    lo = cv2.erode(label, kernel)
    out = label.copy()
    edge = (hi != lo) & ((hi > 0) | (lo > 0))
    out[edge] = 255
    return out


def _names(prefix: str, start: int, count: int) -> List[str]:
    return [f'{prefix}_{i:06d}' for i in range(start, start + count)]


def _write_image(root: Path, name: str, img: np.ndarray, mask: np.ndarray, with_voc_gt: bool) -> None:
    ok, buf = cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f'JPEG encoding failed for {name}')
    atomic_save_bytes(root / 'JPEGImages' / f'{name}.jpg', buf.tobytes())
    save_mask(root / 'SegmentationClassAug' / f'{name}.png', mask)
    if with_voc_gt:
        save_mask(root / 'SegmentationClass' / f'{name}.png', mask)


def _meta(seed: int, num_train: int, num_val: int, size: int, train_fraction: float) -> Dict[str, object]:
    return dict(generator=GENERATOR, version=GENERATOR_VERSION, seed=seed, num_train=num_train, num_val=num_val,
                size=size, train_fraction=train_fraction)


def class_legend() -> Dict[str, str]:
    """``{VOC class name: synthetic appearance}`` for classes 1..20, e.g. ``'aeroplane': 'red stripes disc'``."""
    legend = {}
    for cls in range(1, NUM_CLASSES):
        shape, hue, tex = class_spec(cls)
        legend[VOC_CLASSES[cls]] = f'{HUE_NAMES[HUES.index(hue)]} {tex} {shape}'
    return legend


def _readme(meta: Dict[str, object], n_voc_train: int) -> str:
    legend = '\n'.join(f'  {i:2d} {name:<12s} {look}' for i, (name, look) in enumerate(class_legend().items(), 1))
    return f"""Synthetic VOC-format dataset written by {GENERATOR} (generator version {meta['version']}).
Seed {meta['seed']}; {meta['num_train']} train_aug images (the first {n_voc_train} also form train) and \
{meta['num_val']} val images, {meta['size']}x{meta['size']} px, JPEG quality 90.
Regenerate with: vim-wsss make-synthetic --out DIR --seed {meta['seed']} --num-train {meta['num_train']} \
--num-val {meta['num_val']} --size {meta['size']}

Layout (as VOCdevkit/VOC2012):
  JPEGImages/<name>.jpg              RGB images
  SegmentationClass/<name>.png       palette PNG masks for train and val (0 background, 1..20, 255 boundary band)
  SegmentationClassAug/<name>.png    the same masks for every image (train_aug + val)
  ImageSets/Segmentation/{{train,train_aug,val}}.txt
  cls_labels_onehot.npy              image-level labels, ToCo format ({{name: (20,) float32}})
  meta.json                          generator arguments (re-running with the same ones is a no-op)

Classes keep the VOC names and indices; each is one (colour, texture, shape) combination. Backgrounds hold muted
blobs, noise, gradients and saturated rings/lines that belong to no class. Later objects occlude earlier ones and
masks show what is visible.
{legend}
"""


def _read_meta(root: Path) -> Dict[str, object]:
    """``meta.json`` of a finished dataset, or {} if absent or unreadable."""
    try:
        meta = json.loads((root / 'meta.json').read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _prepare_folder(root: Path) -> None:
    """Make ``root`` ready for writing: create it, or clear an earlier synthetic dataset; refuse foreign folders."""
    if not root.exists():
        root.mkdir(parents=True)
        return
    if not root.is_dir():
        raise FileExistsError(f'{root} exists and is not a folder; choose another --out.')
    if not any(root.iterdir()):
        return
    if not (root / MARKER).is_file() and _read_meta(root).get('generator') != GENERATOR:
        raise FileExistsError(f'{root} is not empty and holds no synthetic dataset written by vim_wsss; choose a new '
                              f'or empty folder for --out (nothing was written).')
    for path in [root / name for name in OUTPUTS] + list(root.glob('.tmp-*')):  # .tmp-*: an interrupted write
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def make_synthetic(out_dir: PathLike, seed: int = 0, num_train: int = 800, num_val: int = 150, size: int = 64,
                   train_fraction: float = 0.375) -> Path:
    """Write the synthetic dataset in VOC layout and return its root.

    Args:
        out_dir: root to create (``JPEGImages/``, ``SegmentationClass/``, ``SegmentationClassAug/``,
            ``ImageSets/Segmentation/{train,train_aug,val}.txt``, ``cls_labels_onehot.npy``, ``meta.json``,
            ``README.txt``). It must be new, empty, or an earlier output of this function.
        seed: generator seed; same seed and sizes -> identical images and byte-identical masks.
        num_train: images in ``train_aug``; the first ``train_fraction`` of them also form ``train`` (the VOC split
            with ``SegmentationClass`` GT, where seeds are scored).
        num_val: images in ``val``.
        size: square image side in pixels.
        train_fraction: share of ``train_aug`` that is also listed in ``train``.

    Returns:
        ``Path(out_dir)``. Re-running with the same arguments into a finished folder does nothing; other arguments
        (or an interrupted run) regenerate it.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder that this function did not write.
    """
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError(f'need num_train >= 1, num_val >= 1 and size >= 16, got {num_train}, {num_val}, {size}')
    root = Path(out_dir)
    meta = _meta(seed, num_train, num_val, size, train_fraction)
    if _read_meta(root) == meta:
        return root
    _prepare_folder(root)
    atomic_save_json(root / MARKER, meta)
    train = _names('2026', 0, num_train)
    val = _names('2026', num_train, num_val)
    n_voc_train = max(1, int(round(num_train * train_fraction)))
    labels = {}
    for index, name in enumerate(train + val):
        rng = np.random.default_rng([seed, index])
        img, mask = render_image(size, rng)
        _write_image(root, name, img, mask, with_voc_gt=index < n_voc_train or index >= num_train)
        labels[name] = labels_from_mask(mask)
    lists = root / SPLIT_DIR
    for split, names in (('train_aug', train), ('train', train[:n_voc_train]), ('val', val)):
        atomic_save_bytes(lists / f'{split}.txt', ('\n'.join(names) + '\n').encode())
    save_cls_labels(root / 'cls_labels_onehot.npy', labels)
    atomic_save_bytes(root / 'README.txt', _readme(meta, n_voc_train).encode())
    atomic_save_json(root / 'meta.json', meta)  # written last: its presence means the dataset is complete
    return root
