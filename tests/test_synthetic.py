"""The synthetic VOC-format generator: layout, determinism, label/mask consistency, boundary band."""
from __future__ import annotations

import numpy as np

from vim_wsss.data.synthetic import class_spec, make_synthetic
from vim_wsss.data.voc import labels_from_mask, load_cls_labels, read_image, read_mask, read_split


def _arrays(root, names):
    return [(read_image(root / 'JPEGImages' / f'{n}.jpg'), read_mask(root / 'SegmentationClassAug' / f'{n}.png'))
            for n in names]


def test_layout(synthetic_root):
    for sub in ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug', 'ImageSets/Segmentation'):
        assert (synthetic_root / sub).is_dir()
    train, train_aug, val = (read_split(synthetic_root, s) for s in ('train', 'train_aug', 'val'))
    assert set(train) < set(train_aug) and not set(train_aug) & set(val)
    assert len(train_aug) == 40 and len(val) == 12
    for n in train + val:  # VOC GT exists for train and val, the aug GT for everything
        assert (synthetic_root / 'SegmentationClass' / f'{n}.png').is_file()
    assert len(list((synthetic_root / 'SegmentationClassAug').glob('*.png'))) == 52


def test_labels_match_masks_and_band_exists(synthetic_root):
    labels = load_cls_labels(synthetic_root / 'cls_labels_onehot.npy')
    names = read_split(synthetic_root, 'train_aug')
    counts = []
    for name, (img, mask) in zip(names, _arrays(synthetic_root, names)):
        np.testing.assert_array_equal(labels[name], labels_from_mask(mask))
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert (mask == 255).any() and (mask == 0).any()
        counts.append(labels[name].sum())
    assert max(counts) >= 2  # some images hold several classes
    fg = np.mean([((m > 0) & (m < 255)).mean() for _, m in _arrays(synthetic_root, names)])
    assert 0.05 < fg < 0.6  # objects neither vanish nor fill the image


def test_deterministic_by_seed(tmp_path):
    a = make_synthetic(tmp_path / 'a', seed=3, num_train=6, num_val=2, size=48)
    b = make_synthetic(tmp_path / 'b', seed=3, num_train=6, num_val=2, size=48)
    c = make_synthetic(tmp_path / 'c', seed=4, num_train=6, num_val=2, size=48)
    names = read_split(a, 'train_aug')
    for (ia, ma), (ib, mb) in zip(_arrays(a, names), _arrays(b, names)):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(_arrays(a, names), _arrays(c, names)))
    mtime = (a / 'meta.json').stat().st_mtime_ns
    make_synthetic(tmp_path / 'a', seed=3, num_train=6, num_val=2, size=48)  # finished folder: no-op
    assert (a / 'meta.json').stat().st_mtime_ns == mtime


def test_classes_are_distinct_specs():
    specs = {class_spec(c)[:2] for c in range(1, 21)}
    assert len(specs) == 20
