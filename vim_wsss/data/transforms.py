"""albumentations pipelines shared by the classification and segmentation datasets.

Both return ``dict(image=(3, H, W) float tensor, mask=(H, W) long tensor if a mask was given)``; images are
normalised with ImageNet mean/std on the 0..255 scale. Padding uses image 0 and mask 255 (ignored).
"""
from __future__ import annotations

from typing import Optional, Tuple

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from vim_wsss.data.voc import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


def _normalize() -> A.Normalize:
    return A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=1.0)


def train_transform(crop_size: int, scale_range: Tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                    color_jitter: Optional[Tuple[float, float, float, float]] = (0.3, 0.3, 0.3, 0.05),
                    base_size: Optional[int] = None) -> A.Compose:
    """Random rescale -> pad (0 / 255) -> random crop -> flip -> colour jitter -> normalise -> tensor.

    Args:
        crop_size: square output size.
        scale_range: random rescale factors relative to ``base_size`` (longest side) or the image size if None.
        hflip: random horizontal flip.
        color_jitter: (brightness, contrast, saturation, hue) or None.
        base_size: longest side before the random scale (None keeps the image size).
    """
    ops = []
    if base_size is not None:
        ops.append(A.LongestMaxSize(max_size=base_size))
    ops += [
        A.RandomScale(scale_limit=(scale_range[0] - 1.0, scale_range[1] - 1.0), interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST, p=1.0),
        A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=cv2.BORDER_CONSTANT, fill=0,
                      fill_mask=IGNORE_INDEX),
        A.RandomCrop(crop_size, crop_size),
    ]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if color_jitter is not None:
        b, c, s, h = color_jitter
        ops.append(A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=0.8))
    ops += [_normalize(), ToTensorV2()]
    return A.Compose(ops)


def eval_transform(size: Optional[int] = None) -> A.Compose:
    """Resize to ``size`` x ``size`` (masks: nearest) if given, normalise, tensor."""
    ops = []
    if size is not None:
        ops.append(A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    ops += [_normalize(), ToTensorV2()]
    return A.Compose(ops)
