"""Checked loading transforms for mmseg pipelines: a bad image or mask stops with the file's name and the fix.

``LoadVOCImage`` / ``LoadVOCAnnotations`` replace mmcv's ``LoadImageFromFile`` / mmseg's ``LoadAnnotations`` in the
seg configs (same arguments and outputs, same pipeline positions). Their errors are :class:`DataError` /
:class:`MissingFileError`, which keep their one-line message through DataLoader workers.
"""
from __future__ import annotations

from typing import Dict, Optional

from mmcv.transforms import LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

from vim_wsss.data.voc import NUM_CLASSES, DataError, check_mask_values, check_same_size, read_image, read_mask


@TRANSFORMS.register_module()
class LoadVOCImage(LoadImageFromFile):
    """``LoadImageFromFile`` (BGR uint8 ``img (H, W, 3)``, ``img_shape``, ``ori_shape``) that names the file and the
    fix when it cannot read an image (missing, empty, truncated, not an image)."""

    def transform(self, results: Dict) -> Optional[Dict]:
        try:
            return super().transform(results)
        except Exception as err:
            read_image(results['img_path'])  # raises the toolkit's error for a missing / undecodable file
            raise DataError(f"cannot decode image {results['img_path']} ({err!r}); re-extract the file or remove "
                            f"its name from the split list.") from err


@TRANSFORMS.register_module()
class LoadVOCAnnotations(LoadAnnotations):
    """``LoadAnnotations`` (``gt_seg_map (H, W)``) that checks the mask: one channel, class indices
    ``0..num_classes-1`` or 255, and the size of its image (``ori_shape``).

    Args:
        num_classes: classes including background (21 for VOC).
        **kwargs: ``LoadAnnotations`` arguments.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def transform(self, results: Dict) -> Dict:
        path = results['seg_map_path']
        try:
            results = super().transform(results)
        except Exception as err:
            read_mask(path, self.num_classes)  # raises the toolkit's error for a missing / undecodable file
            raise DataError(f'cannot decode mask {path} ({err!r}); regenerate it as a class-index PNG.') from err
        mask = results['gt_seg_map']
        if mask.ndim != 2:
            raise DataError(f'mask {path} has shape {mask.shape}: a colour map cannot be used as labels; use '
                            f'single-channel class-index PNGs (palette or grayscale; 0..20, 255 = ignore).')
        check_mask_values(mask, path, self.num_classes)
        if 'ori_shape' in results:
            check_same_size(results['ori_shape'], mask.shape, f"image {results['img_path']}", f'mask {path}')
        return results
