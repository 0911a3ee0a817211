"""Pictures of explanations: heat-map overlays, overlay grids and attention-matrix images (RGB uint8 arrays).

Attention matrices are shown as in both Mamba explainability papers: min-max normalised absolute values per matrix
(no softmax, channels not aggregated), here with a perceptually uniform colormap.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

__all__ = [
    'denormalize', 'overlay_heatmap', 'overlay_grid', 'attention_matrix_image', 'attention_matrices_grid',
    'save_png', 'colorize',
]

try:
    from vim_wsss.data.voc import IMAGENET_MEAN, IMAGENET_STD
except ImportError:  # pragma: no cover - fallback until vim_wsss.data lands
    IMAGENET_MEAN = (123.675, 116.28, 103.53)
    IMAGENET_STD = (58.395, 57.12, 57.375)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Normalised image ``(3, H, W)`` (ImageNet statistics, 0..255 scale) -> RGB uint8 ``(H, W, 3)``."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = image.detach().float().cpu() * std + mean
    return rgb.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _to_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def colorize(values: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Values in [0, 1] ``(H, W)`` -> RGB uint8 ``(H, W, 3)`` through an OpenCV colormap."""
    gray = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, colormap), cv2.COLOR_BGR2RGB)


def overlay_heatmap(image: np.ndarray, relevance: object, alpha: float = 0.5,
                    colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a relevance heat map over an image.

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        relevance: ``(h, w)`` map (tensor or array); resized bilinearly to (H, W) and min-max normalised.
        alpha: weight of the heat map.
        colormap: OpenCV colormap id.

    Returns:
        RGB uint8 ``(H, W, 3)``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}')
    rel = _to_numpy(relevance)
    if rel.ndim != 2:
        raise ValueError(f'relevance must be 2-D (h, w), got shape {rel.shape}')
    height, width = image.shape[:2]
    rel = cv2.resize(rel, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = colorize(_minmax(rel), colormap)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def overlay_grid(tiles: Sequence[np.ndarray], ncols: Optional[int] = None, pad: int = 4,
                 background: int = 255) -> np.ndarray:
    """Tile equally sized RGB uint8 images ``(H, W, 3)`` row by row into one image with ``pad`` pixels between."""
    if not tiles:
        raise ValueError('overlay_grid needs at least one tile')
    height, width = tiles[0].shape[:2]
    if any(t.shape[:2] != (height, width) for t in tiles):
        raise ValueError('overlay_grid: all tiles must have the same size')
    ncols = ncols or int(np.ceil(np.sqrt(len(tiles))))
    nrows = int(np.ceil(len(tiles) / ncols))
    grid = np.full((nrows * height + (nrows - 1) * pad, ncols * width + (ncols - 1) * pad, 3), background, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        grid[r * (height + pad):r * (height + pad) + height, c * (width + pad):c * (width + pad) + width] = tile
    return grid


def attention_matrix_image(matrix: object, size: Optional[int] = None,
                           colormap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """One attention matrix ``(L, L)`` as an image of min-max normalised ``|H|``.

    Args:
        matrix: ``(L, L)`` tensor or array.
        size: output side (nearest-neighbour upscaling keeps the entries crisp); default L.
        colormap: OpenCV colormap id.

    Returns:
        RGB uint8 ``(size, size, 3)``.
    """
    mat = np.abs(_to_numpy(matrix))
    if mat.ndim != 2:
        raise ValueError(f'matrix must be 2-D, got shape {mat.shape}')
    img = colorize(_minmax(mat), colormap)
    if size is not None and size != mat.shape[0]:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
    return img


def attention_matrices_grid(matrices: object, indices: Optional[Sequence[int]] = None, size: Optional[int] = None,
                            ncols: Optional[int] = None) -> np.ndarray:
    """Several matrices (per channel or per layer), each normalised on its own, as one grid image.

    Args:
        matrices: ``(C, L, L)`` tensor/array (e.g. ``mamba_attention(...)[0]``) or a list of ``(L, L)``.
        indices: which of them to draw (default all).
        size: side of each tile.
        ncols: tiles per row.

    Returns:
        RGB uint8 grid.
    """
    mats = [matrices[i] for i in (indices if indices is not None else range(len(matrices)))]
    return overlay_grid([attention_matrix_image(m, size=size) for m in mats], ncols=ncols)


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically (temporary file in the same folder + ``os.replace``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ok, data = cv2.imencode('.png', cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f'could not encode {path} as PNG')
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.png.tmp')
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
