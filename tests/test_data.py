"""VOC reader, label formats, datasets and every bad-input case."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from vim_wsss.data.datasets import VOCClsDataset, VOCSegDataset
from vim_wsss.data.voc import (DataError, VOC_CLASSES, labels_from_masks, load_cls_labels, read_mask, read_split,
                               save_cls_labels, save_mask)


@pytest.fixture()
def voc_copy(synthetic_root, tmp_path):
    """A private copy of the tiny synthetic dataset that a test may damage."""
    return shutil.copytree(synthetic_root, tmp_path / 'VOC2012')


def test_classes_in_voc_order():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == 'background' and VOC_CLASSES[15] == 'person'


def test_both_label_sources_agree(synthetic_root):
    names = read_split(synthetic_root, 'train_aug') + read_split(synthetic_root, 'val')
    from_file = load_cls_labels(synthetic_root / 'cls_labels_onehot.npy')
    from_masks = labels_from_masks(synthetic_root, names, 'SegmentationClassAug')
    assert set(from_file) == set(names)
    for n in names:
        np.testing.assert_array_equal(from_file[n], from_masks[n])
        assert from_file[n].shape == (20,) and from_file[n].dtype == np.float32


def test_irn_int_key_format_reads_the_same(tmp_path):
    labels = {'2007_000032': np.eye(20, dtype=np.float32)[0], '2008_000123': np.eye(20, dtype=np.float32)[14]}
    save_cls_labels(tmp_path / 'toco.npy', labels)
    np.save(tmp_path / 'irn.npy', {int(k.replace('_', '')): v.astype(np.int32) for k, v in labels.items()})
    a, b = load_cls_labels(tmp_path / 'toco.npy'), load_cls_labels(tmp_path / 'irn.npy')
    assert a.keys() == b.keys() == labels.keys()
    for k in labels:
        np.testing.assert_array_equal(a[k], b[k])


def test_trainaug_alias_and_names_stay_strings(voc_copy):
    lists = voc_copy / 'ImageSets' / 'Segmentation'
    (lists / 'train_aug.txt').rename(lists / 'trainaug.txt')
    names = read_split(voc_copy, 'train_aug')
    assert all(isinstance(n, str) and '_' in n for n in names)


def test_cls_dataset_items(synthetic_root):
    ds = VOCClsDataset(synthetic_root, 'train_aug', transform=dict(kind='train', crop_size=48))
    item = ds[3]
    assert item['img'].shape == (3, 48, 48) and item['label'].shape == (20,) and item['label'].sum() >= 1
    assert item['ori_shape'] == (64, 64)
    masks_ds = VOCClsDataset(synthetic_root, 'train_aug', label_source='masks')
    assert all((masks_ds.labels[n] == ds.labels[n]).all() for n in ds.names)


def test_seg_dataset_pads_with_ignore(synthetic_root):
    ds = VOCSegDataset(synthetic_root, 'val', transform=dict(kind='train', crop_size=96, scale_range=(0.5, 0.6)))
    item = ds[0]
    assert item['img'].shape == (3, 96, 96) and item['mask'].shape == (96, 96)
    assert (item['mask'] == 255).any()  # padding of a downscaled 64 px image


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='JPEGImages'):
        VOCClsDataset(tmp_path / 'nope', 'train')


def test_missing_split_names_the_list(synthetic_root):
    with pytest.raises(FileNotFoundError, match='test.txt'):
        VOCClsDataset(synthetic_root, 'test')


def test_missing_image_names_the_file(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    (voc_copy / 'JPEGImages' / f'{name}.jpg').unlink()
    ds = VOCClsDataset(voc_copy, 'val')
    with pytest.raises(FileNotFoundError, match=name):
        ds[0]
    skipping = VOCClsDataset(voc_copy, 'val', skip_bad=True)
    assert skipping.skipped == [name] and len(skipping) == len(ds) - 1


def test_corrupt_jpeg_names_the_file(voc_copy):
    name = read_split(voc_copy, 'val')[1]
    path = voc_copy / 'JPEGImages' / f'{name}.jpg'
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=name):
        VOCClsDataset(voc_copy, 'val')[1]


def test_mask_with_bad_label_names_the_file_and_values(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    path = voc_copy / 'SegmentationClassAug' / f'{name}.png'
    mask = read_mask(path)
    mask[0, 0] = 37
    save_mask(path, mask)
    with pytest.raises(DataError, match=r'\[37\]'):
        VOCSegDataset(voc_copy, 'val')[0]


def test_rgb_mask_is_rejected(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    path = voc_copy / 'SegmentationClassAug' / f'{name}.png'
    Image.open(path).convert('RGB').save(path)
    with pytest.raises(DataError, match='colour maps'):
        read_mask(path)


def test_size_mismatch_names_the_mask(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    path = voc_copy / 'SegmentationClassAug' / f'{name}.png'
    save_mask(path, np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match=name):
        VOCSegDataset(voc_copy, 'val')[0]
    assert VOCSegDataset(voc_copy, 'val', skip_bad=True).skipped == [name]
