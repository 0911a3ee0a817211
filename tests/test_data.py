"""VOC reader, label formats, transforms, datasets and every bad-input case."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vim_wsss.data.datasets import VOCClsDataset, VOCSegDataset, collate
from vim_wsss.data.transforms import eval_transform, train_transform
from vim_wsss.data.voc import (IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, VOC_PALETTE, DataError, labels_from_masks,
                               load_cls_labels, read_image, read_mask, read_mask_pair, read_split, save_cls_labels,
                               save_mask)


@pytest.fixture()
def voc_copy(synthetic_root, tmp_path):
    """A private copy of the tiny synthetic dataset that a test may damage."""
    return shutil.copytree(synthetic_root, tmp_path / 'VOC2012')


def test_constants():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == 'background' and VOC_CLASSES[15] == 'person'
    assert VOC_CLASSES[20] == 'tvmonitor' and len(VOC_PALETTE) == 768
    assert VOC_PALETTE[3:6] == [128, 0, 0] and VOC_PALETTE[15 * 3:16 * 3] == [192, 128, 128]  # aeroplane, person
    assert VOC_PALETTE[255 * 3:] == [224, 224, 192]  # the ignore band colour


def test_both_label_sources_agree(synthetic_root):
    names = read_split(synthetic_root, 'train_aug') + read_split(synthetic_root, 'val')
    from_file = load_cls_labels(synthetic_root / 'cls_labels_onehot.npy')
    from_masks = labels_from_masks(synthetic_root, names, 'SegmentationClassAug')
    assert set(from_file) == set(names)
    for n in names:
        np.testing.assert_array_equal(from_file[n], from_masks[n])
        assert from_file[n].shape == (20,) and from_file[n].dtype == np.float32


def test_irn_int_key_format_reads_the_same(tmp_path):
    eye = np.eye(20, dtype=np.float32)
    labels = {'2007_000032': eye[0], '2008_000123': eye[14] + eye[4]}
    save_cls_labels(tmp_path / 'toco.npy', labels)
    np.save(tmp_path / 'irn.npy', {np.int32(k.replace('_', '')): v.astype(np.int32) for k, v in labels.items()})
    a, b = load_cls_labels(tmp_path / 'toco.npy'), load_cls_labels(tmp_path / 'irn.npy')
    assert a.keys() == b.keys() == labels.keys()
    for k in labels:
        np.testing.assert_array_equal(a[k], labels[k])
        np.testing.assert_array_equal(b[k], labels[k])
        assert b[k].dtype == np.float32


def test_bad_label_files_name_the_file(tmp_path):
    np.save(tmp_path / 'plain.npy', np.zeros(3))
    with pytest.raises(DataError, match='plain.npy'):
        load_cls_labels(tmp_path / 'plain.npy')
    np.save(tmp_path / 'bg.npy', {'2007_000032': np.zeros(21)})
    with pytest.raises(DataError, match=r'bg.npy.*\(21,\)'):
        load_cls_labels(tmp_path / 'bg.npy')
    with pytest.raises(FileNotFoundError, match='nope.npy'):
        load_cls_labels(tmp_path / 'nope.npy')


def test_split_lists_trainaug_alias_and_deeplab_lines(voc_copy):
    lists = voc_copy / 'ImageSets' / 'Segmentation'
    names = read_split(voc_copy, 'train_aug')
    (lists / 'train_aug.txt').rename(lists / 'trainaug.txt')
    assert read_split(voc_copy, 'train_aug') == names
    (lists / 'deeplab.txt').write_text(''.join(f'/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n' for n in names))
    assert read_split(voc_copy, 'deeplab') == names
    (lists / 'ints.txt').write_text('2007_000032\n2007_000039\n')
    assert read_split(voc_copy, 'ints') == ['2007_000032', '2007_000039']  # names stay str (numpy int trap)


def test_duplicate_names_in_a_split_are_rejected(voc_copy):
    lists = voc_copy / 'ImageSets' / 'Segmentation'
    names = read_split(voc_copy, 'val')
    (lists / 'val.txt').write_text('\n'.join(names + [names[3], names[1], names[3]]) + '\n')
    pattern = rf'split list {lists}/val.txt lists 2 name\(s\) more than once \({names[1]}, {names[3]}\).*one line per'
    with pytest.raises(DataError, match=pattern):
        read_split(voc_copy, 'val')
    with pytest.raises(DataError, match='more than once'):
        VOCSegDataset(voc_copy, 'val')


def _write_16bit(path, samples):
    """``samples`` uint16 ``(H, W)`` grey or ``(H, W, C)`` RGB / RGBA, written as a 16-bit PNG."""
    import cv2

    bgr = samples if samples.ndim == 2 else samples[..., [2, 1, 0, 3][:samples.shape[2]]]
    assert cv2.imwrite(str(path), bgr)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 257, 40000, 65535]], np.uint16)
    _write_16bit(tmp_path / 'grey.png', grey)
    assert Image.open(tmp_path / 'grey.png').mode.startswith('I')  # what Pillow's convert('RGB') clipped to 255
    np.testing.assert_array_equal(read_image(tmp_path / 'grey.png'), np.repeat([[[0], [1], [156], [255]]], 3, 2))
    rgb = np.array([[[1000, 30000, 65535]]], np.uint16)
    _write_16bit(tmp_path / 'rgb.png', rgb)
    np.testing.assert_array_equal(read_image(tmp_path / 'rgb.png'), [[[4, 117, 255]]])  # round(v / 257)
    _write_16bit(tmp_path / 'rgba.png', np.array([[[1000, 30000, 65535, 7]]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / 'rgba.png'), [[[4, 117, 255]]])


def test_grey_palette_and_alpha_images_read_as_rgb_uint8(tmp_path):
    Image.fromarray(np.full((2, 3), 77, np.uint8), 'L').save(tmp_path / 'grey.png')
    Image.fromarray(np.full((2, 3, 2), [90, 3], np.uint8), 'LA').save(tmp_path / 'grey_alpha.png')
    Image.fromarray(np.full((2, 3, 4), [1, 2, 3, 0], np.uint8), 'RGBA').save(tmp_path / 'rgba.png')
    palette = Image.fromarray(np.full((2, 3), 5, np.uint8), 'P')
    palette.putpalette(VOC_PALETTE)
    palette.save(tmp_path / 'palette.png')
    expected = {'grey': [77] * 3, 'grey_alpha': [90] * 3, 'rgba': [1, 2, 3], 'palette': VOC_PALETTE[15:18]}
    for name, colour in expected.items():
        image = read_image(tmp_path / f'{name}.png')
        assert image.shape == (2, 3, 3) and image.dtype == np.uint8, name
        np.testing.assert_array_equal(image[1, 2], colour, err_msg=name)


def test_mask_roundtrip_is_a_palette_png(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (9, 13))
    mask[0, :4] = 255
    save_mask(tmp_path / 'm.png', mask)
    with Image.open(tmp_path / 'm.png') as img:
        assert img.mode == 'P' and img.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(read_mask(tmp_path / 'm.png'), mask)
    with pytest.raises(ValueError, match='0..255'):
        save_mask(tmp_path / 'neg.png', mask - 1)
    assert not list(tmp_path.glob('.tmp-*'))  # atomic writes leave nothing behind


def test_eval_transform_normalises_exactly():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    mask = rng.integers(0, 21, (10, 12)).astype(np.uint8)
    out = eval_transform()(image=image, mask=mask)
    expected = (image.astype(np.float32) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    torch.testing.assert_close(out['image'], torch.from_numpy(expected.transpose(2, 0, 1)))
    assert torch.equal(torch.as_tensor(out['mask']).long(), torch.from_numpy(mask).long())
    resized = eval_transform(size=16)(image=image, mask=mask)
    assert resized['image'].shape == (3, 16, 16) and set(np.unique(resized['mask'])) <= set(np.unique(mask))


def test_train_transform_pads_with_ignore_and_keeps_labels():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (20, 24)).astype(np.uint8)
    out = train_transform(crop_size=40, scale_range=(0.5, 0.6), color_jitter=None)(image=image, mask=mask)
    img, m = out['image'], torch.as_tensor(out['mask'])
    assert img.shape == (3, 40, 40) and m.shape == (40, 40)
    pad = m == 255
    assert pad.any() and set(m[~pad].unique().tolist()) <= {0, 1, 2, 3}  # nearest resampling, no new labels
    zero = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(img[:, pad], zero[:, None].expand(3, int(pad.sum())))  # padded image is 0 (black)


def test_cls_dataset_items_and_collate(synthetic_root):
    ds = VOCClsDataset(synthetic_root, 'train_aug', transform=dict(kind='train', crop_size=48))
    item = ds[3]
    assert item['img'].shape == (3, 48, 48) and item['label'].shape == (20,) and item['label'].sum() >= 1
    assert item['ori_shape'] == (64, 64) and item['name'] == ds.names[3]
    masks_ds = VOCClsDataset(synthetic_root, 'train_aug', label_source='masks')
    assert all((masks_ds.labels[n] == ds.labels[n]).all() for n in ds.names)
    batch = collate([ds[0], ds[1]])
    assert batch['img'].shape == (2, 3, 48, 48) and batch['label'].shape == (2, 20)
    assert batch['name'] == ds.names[:2] and batch['ori_shape'] == [(64, 64), (64, 64)]


def test_augmentations_follow_the_run_seed(synthetic_root):
    """albumentations keeps its own RNG: the datasets seed it from numpy's, so mmengine's seed reproduces a run."""
    def draw(seed):
        np.random.seed(seed)
        ds = VOCSegDataset(synthetic_root, 'train_aug', transform=dict(kind='train', crop_size=48,
                                                                      scale_range=(0.5, 1.5)))
        return torch.stack([ds[i]['img'] for i in range(4)])

    torch.testing.assert_close(draw(0), draw(0), rtol=0, atol=0)
    assert not torch.equal(draw(0), draw(1))


def test_datasets_build_from_mmengine_registry(synthetic_root):
    from mmengine.registry import DATASETS, FUNCTIONS

    ds = DATASETS.build(dict(type='VOCSegDataset', root=str(synthetic_root), split='val',
                             transform=dict(kind='eval')))
    batch = FUNCTIONS.get('voc_collate')([ds[0], ds[1]])
    assert batch['img'].shape == (2, 3, 64, 64) and batch['mask'].dtype == torch.long
    gt = read_mask(synthetic_root / 'SegmentationClassAug' / f'{ds.names[1]}.png')
    np.testing.assert_array_equal(batch['mask'][1].numpy(), gt)


def test_seg_dataset_pads_with_ignore(synthetic_root):
    ds = VOCSegDataset(synthetic_root, 'val', transform=dict(kind='train', crop_size=96, scale_range=(0.5, 0.6)))
    item = ds[0]
    assert item['img'].shape == (3, 96, 96) and item['mask'].shape == (96, 96)
    assert (item['mask'] == 255).any()  # padding of a downscaled 64 px image


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.*JPEGImages'):
        VOCClsDataset(tmp_path / 'nope', 'train')


def test_missing_split_names_the_list(synthetic_root):
    with pytest.raises(FileNotFoundError, match='test.txt'):
        VOCClsDataset(synthetic_root, 'test')


def test_missing_labels(voc_copy):
    with pytest.raises(FileNotFoundError, match='other.npy'):
        VOCClsDataset(voc_copy, 'val', cls_labels=voc_copy / 'other.npy', label_source='file')
    labels = load_cls_labels(voc_copy / 'cls_labels_onehot.npy')
    name = read_split(voc_copy, 'val')[2]
    del labels[name]
    with pytest.raises(DataError, match=name):
        VOCClsDataset(voc_copy, 'val', cls_labels=labels)
    (voc_copy / 'cls_labels_onehot.npy').unlink()  # 'auto' falls back to the masks
    assert VOCClsDataset(voc_copy, 'val').labels[name].sum() >= 1


def test_missing_image_names_the_file(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    (voc_copy / 'JPEGImages' / f'{name}.jpg').unlink()
    ds = VOCClsDataset(voc_copy, 'val')
    with pytest.raises(FileNotFoundError, match=name):
        ds[0]
    skipping = VOCClsDataset(voc_copy, 'val', skip_bad=True)
    assert skipping.skipped == [name] and len(skipping) == len(ds) - 1 and name not in skipping.names


def test_corrupt_jpeg_names_the_file(voc_copy):
    name = read_split(voc_copy, 'val')[1]
    path = voc_copy / 'JPEGImages' / f'{name}.jpg'
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=name):
        read_image(path)
    with pytest.raises(DataError, match=name):
        VOCClsDataset(voc_copy, 'val')[1]
    assert VOCSegDataset(voc_copy, 'val', skip_bad=True).skipped == [name]


def test_mask_with_bad_label_names_the_file_and_values(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    path = voc_copy / 'SegmentationClassAug' / f'{name}.png'
    mask = read_mask(path)
    mask[0, 0] = 37
    save_mask(path, mask)
    with pytest.raises(DataError, match=rf'{name}.png.*\[37\]'):
        VOCSegDataset(voc_copy, 'val')[0]


def test_rgb_mask_is_rejected(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    path = voc_copy / 'SegmentationClassAug' / f'{name}.png'
    Image.open(path).convert('RGB').save(path)
    with pytest.raises(DataError, match=f'{name}.png.*colour map.*class-index'):
        read_mask(path)
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(path)  # 16-bit grayscale
    with pytest.raises(DataError, match='8-bit'):
        read_mask(path)


def test_size_mismatch_names_both_files_and_sizes(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    path = voc_copy / 'SegmentationClassAug' / f'{name}.png'
    save_mask(path, np.zeros((10, 12), np.uint8))
    pattern = rf'mask {path} is 10x12 \(HxW\) but image {voc_copy}/JPEGImages/{name}.jpg is 64x64.*regenerate'
    with pytest.raises(DataError, match=pattern):
        VOCSegDataset(voc_copy, 'val')[0]
    assert VOCSegDataset(voc_copy, 'val', skip_bad=True).skipped == [name]
    gt = voc_copy / 'SegmentationClass' / f'{name}.png'
    with pytest.raises(DataError, match=rf'mask {path} is 10x12.*its ground truth {gt} is 64x64'):
        read_mask_pair(path, gt)


def test_errors_from_dataloader_workers_keep_their_one_line_message(voc_copy):
    name = read_split(voc_copy, 'val')[0]
    mask = read_mask(voc_copy / 'SegmentationClassAug' / f'{name}.png')
    mask[0, 0] = 37
    save_mask(voc_copy / 'SegmentationClassAug' / f'{name}.png', mask)
    (voc_copy / 'JPEGImages' / f'{read_split(voc_copy, "train")[0]}.jpg').unlink()
    for split, kind in (('val', DataError), ('train', FileNotFoundError)):
        dataset = VOCSegDataset(voc_copy, split)
        with pytest.raises(kind) as direct:
            dataset[0]
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate)
        with pytest.raises(kind) as through_worker:
            next(iter(loader))
        assert str(through_worker.value) == str(direct.value) and '\n' not in str(direct.value)
        assert 'Traceback' in through_worker.value.wrapped_message
