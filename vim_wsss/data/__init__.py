"""VOC-format data: constants and IO (:mod:`.voc`), datasets, transforms and the synthetic generator."""
from .voc import (IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, VOC_CLASSES, VOC_PALETTE, DataError,
                  MissingFileError, check_mask_values, check_pair, check_root, check_same_size, labels_from_mask,
                  labels_from_masks, load_cls_labels, read_image, read_mask, read_mask_pair, read_name_list, read_split,
                  save_cls_labels, save_mask)

__all__ = [
    'IGNORE_INDEX', 'IMAGENET_MEAN', 'IMAGENET_STD', 'NUM_CLASSES', 'VOC_CLASSES', 'VOC_PALETTE', 'DataError',
    'MissingFileError', 'check_mask_values', 'check_pair', 'check_root', 'check_same_size', 'labels_from_mask',
    'labels_from_masks', 'load_cls_labels', 'read_image', 'read_mask', 'read_mask_pair', 'read_name_list', 'read_split',
    'save_cls_labels', 'save_mask', 'VOCClsDataset', 'VOCSegDataset', 'collate', 'make_synthetic',
]


def __getattr__(name: str):  # datasets pull in albumentations/mmengine: import them on first use
    if name in ('VOCClsDataset', 'VOCSegDataset', 'collate'):
        from . import datasets
        return getattr(datasets, name)
    if name == 'make_synthetic':
        from .synthetic import make_synthetic
        return make_synthetic
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
