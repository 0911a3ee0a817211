"""The synthetic VOC-format generator: layout, determinism, label/mask consistency, boundary band, folder safety."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vim_wsss.data.synthetic import class_legend, class_spec, make_synthetic
from vim_wsss.data.voc import labels_from_mask, load_cls_labels, read_image, read_mask, read_split


def _arrays(root, names):
    return [(read_image(root / 'JPEGImages' / f'{n}.jpg'), read_mask(root / 'SegmentationClassAug' / f'{n}.png'))
            for n in names]


def _grow(region):
    return cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def test_layout(synthetic_root):
    for sub in ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug', 'ImageSets/Segmentation'):
        assert (synthetic_root / sub).is_dir()
    train, train_aug, val = (read_split(synthetic_root, s) for s in ('train', 'train_aug', 'val'))
    assert set(train) < set(train_aug) and not set(train_aug) & set(val)
    assert len(train_aug) == 40 and len(val) == 12 and len(train) == 15
    for n in train + val:  # VOC GT exists for train and val, the aug GT for everything
        assert (synthetic_root / 'SegmentationClass' / f'{n}.png').is_file()
    assert len(list((synthetic_root / 'SegmentationClassAug').glob('*.png'))) == 52
    assert len(list((synthetic_root / 'JPEGImages').glob('*.jpg'))) == 52
    meta = json.loads((synthetic_root / 'meta.json').read_text())
    assert meta['seed'] == 0 and meta['version'] >= 1
    readme = (synthetic_root / 'README.txt').read_text()
    assert 'Seed 0' in readme and 'person' in readme


def test_labels_match_masks_and_band_exists(synthetic_root):
    labels = load_cls_labels(synthetic_root / 'cls_labels_onehot.npy')
    names = read_split(synthetic_root, 'train_aug')
    counts, repeats, fg = [], 0, []
    for name, (img, mask) in zip(names, _arrays(synthetic_root, names)):
        np.testing.assert_array_equal(labels[name], labels_from_mask(mask))
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert (mask == 255).any() and (mask == 0).any()
        objects = (mask > 0) & (mask < 255)
        for c in np.unique(mask[mask < 255]):  # no pixel of one label touches another label: a band lies between
            assert not (_grow(mask == c) & (mask != c) & (mask != 255)).any()
        for c in np.unique(mask[objects]):
            repeats += cv2.connectedComponents((mask == c).astype(np.uint8))[0] - 1 > 1
        counts.append(labels[name].sum())
        fg.append(objects.mean())
    assert max(counts) >= 2 and min(counts) >= 1  # several classes in some images, never none
    assert repeats >= 1  # some image holds two separate objects of one class
    assert 0.05 < np.mean(fg) < 0.6 and np.max(fg) < 0.95  # objects neither vanish nor fill the image


def test_deterministic_by_seed(tmp_path):
    a = make_synthetic(tmp_path / 'a', seed=3, num_train=6, num_val=2, size=48)
    b = make_synthetic(tmp_path / 'b', seed=3, num_train=6, num_val=2, size=48)
    c = make_synthetic(tmp_path / 'c', seed=4, num_train=6, num_val=2, size=48)
    names = read_split(a, 'train_aug') + read_split(a, 'val')
    for n in names:
        png = f'SegmentationClassAug/{n}.png'
        assert (a / png).read_bytes() == (b / png).read_bytes()  # byte-identical masks
    for (ia, ma), (ib, mb) in zip(_arrays(a, names), _arrays(b, names)):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(_arrays(a, names), _arrays(c, names)))
    mtime = (a / 'meta.json').stat().st_mtime_ns
    make_synthetic(tmp_path / 'a', seed=3, num_train=6, num_val=2, size=48)  # finished folder: no-op
    assert (a / 'meta.json').stat().st_mtime_ns == mtime


def test_rerun_with_other_arguments_replaces_the_dataset(tmp_path):
    root = make_synthetic(tmp_path / 'd', seed=1, num_train=6, num_val=2, size=32)
    make_synthetic(root, seed=1, num_train=3, num_val=1, size=32)
    assert len(list((root / 'JPEGImages').glob('*.jpg'))) == 4  # no stale files from the first run
    assert json.loads((root / 'meta.json').read_text())['num_train'] == 3


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / 'mine.txt').write_text('precious')
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        make_synthetic(tmp_path, num_train=2, num_val=1, size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.txt']


def test_classes_are_distinct_specs():
    assert len({class_spec(c)[:2] for c in range(1, 21)}) == 20  # shape x colour alone tells classes apart
    assert len(set(class_legend().values())) == 20
