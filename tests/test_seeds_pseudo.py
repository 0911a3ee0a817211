"""Stage 1 after the classifier: map cache (seeds), pseudo-mask writer, and the evaluation of seeds / masks."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vim_wsss.data.datasets import VOCClsDataset
from vim_wsss.data.voc import read_mask, read_split, save_mask
from vim_wsss.models import create_model
from vim_wsss.wsss import pseudo as pseudo_module
from vim_wsss.wsss import seeds as seeds_module
from vim_wsss.wsss.evaluate import (baseline_mask, eval_baselines, eval_masks, eval_seeds, save_overlays,
                                    seed_source, split_difference, sweep_bg_threshold)
from vim_wsss.wsss.pseudo import make_pseudo, pseudo_label
from vim_wsss.wsss.seeds import (META_FILE, NO_LABEL_FILE, compute_maps, load_map_file, map_path, save_map_file,
                                 seeds_from_maps, upsample_maps)

GT_DIR = 'SegmentationClassAug'


def eval_dataset(root, split):
    return VOCClsDataset(root, split, transform=dict(kind='eval', size=64))


def tiny_model(name, seed=0):
    torch.manual_seed(seed)
    return create_model(name, num_classes=20).eval()


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir())


@pytest.fixture(scope='module')
def vim_model():
    return tiny_model('vim_test_patch8_64')


@pytest.fixture(scope='module')
def train_ds(synthetic_root):
    return eval_dataset(synthetic_root, 'train')


@pytest.fixture(scope='module')
def cache(synthetic_root, vim_model, tmp_path_factory):
    """Maps of the untrained tiny ViM over train (15) and 5 more images of train_aug, computed once."""
    dataset = eval_dataset(synthetic_root, 'train_aug')
    keep = set(read_split(synthetic_root, 'train')) | set(split_difference(synthetic_root, 'train_aug', 'train')[:5])
    dataset.names = [n for n in dataset.names if n in keep]  # a VOCClsDataset restricted to 20 images
    out = tmp_path_factory.mktemp('seeds') / 'maps'
    result = compute_maps(vim_model, dataset, out, progress=False)
    return dict(dir=out, result=result, dataset=dataset)


# ---------------------------------------------------------------------------------------------------------------
# seeds_from_maps / cache files
# ---------------------------------------------------------------------------------------------------------------
def test_seeds_from_maps_threshold_and_band():
    maps = np.array([[[0.9, 0.2], [0.5, 0.0]],
                     [[0.1, 0.7], [0.6, 0.3]]], np.float32)
    classes = [4, 15]
    # per pixel max: 0.9 (cls 4), 0.7 (cls 15), 0.6 (cls 15), 0.3 (cls 15)
    np.testing.assert_array_equal(seeds_from_maps(maps, classes, 0.5), [[4, 15], [15, 0]])
    np.testing.assert_array_equal(seeds_from_maps(maps, classes, 0.65), [[4, 15], [0, 0]])
    np.testing.assert_array_equal(seeds_from_maps(maps, classes, 0.3), [[4, 15], [15, 0]])  # <= t is background
    # band: max <= low -> 0, low < max <= high -> 255, > high -> class
    np.testing.assert_array_equal(seeds_from_maps(maps, classes, 0.0, high=0.65, low=0.3), [[4, 15], [255, 0]])
    np.testing.assert_array_equal(seeds_from_maps(torch.from_numpy(maps), classes, 0.5), [[4, 15], [15, 0]])
    assert seeds_from_maps(np.zeros((0, 3, 2)), [], 0.5).tolist() == [[0, 0]] * 3
    assert seeds_from_maps(maps, classes, 0.5).dtype == np.uint8
    with pytest.raises(ValueError, match='K = len'):
        seeds_from_maps(maps, [4], 0.5)
    with pytest.raises(ValueError, match='1..20'):
        seeds_from_maps(maps, [0, 4], 0.5)
    with pytest.raises(ValueError, match='both high and low'):
        seeds_from_maps(maps, classes, 0.5, high=0.6)
    with pytest.raises(ValueError, match='must be <='):
        seeds_from_maps(maps, classes, 0.5, high=0.3, low=0.6)


def test_map_file_roundtrip_and_errors(tmp_path):
    maps = np.linspace(0, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    save_map_file(tmp_path / 'a.npz', np.array([3, 7]), maps, (30, 40), rw=maps[::-1])
    cache = load_map_file(tmp_path / 'a.npz')
    assert cache['classes'].tolist() == [3, 7] and cache['size'].tolist() == [30, 40]
    assert cache['maps'].dtype == np.float32 and cache['rw'].dtype == np.float32
    np.testing.assert_allclose(cache['maps'], maps, atol=1e-3)  # stored as fp16
    np.testing.assert_allclose(cache['rw'], maps[::-1], atol=1e-3)

    bad = maps.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match='rw of image img_007'):
        save_map_file(tmp_path / 'img_007.npz', np.array([3, 7]), maps, (30, 40), rw=bad)
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match='maps of image img_008'):
        save_map_file(tmp_path / 'img_008.npz', np.array([3, 7]), bad, (30, 40))
    assert files_in(tmp_path) == ['a.npz']  # nothing written for the bad ones, no temporary left

    with pytest.raises(FileNotFoundError, match='make-seeds'):
        load_map_file(tmp_path / 'missing.npz')
    (tmp_path / 'broken.npz').write_bytes((tmp_path / 'a.npz').read_bytes()[:50])
    with pytest.raises(ValueError, match='unreadable'):
        load_map_file(tmp_path / 'broken.npz')


# ---------------------------------------------------------------------------------------------------------------
# compute_maps
# ---------------------------------------------------------------------------------------------------------------
def test_compute_maps_one_file_per_labelled_image(cache):
    dataset, out = cache['dataset'], cache['dir']
    result = cache['result']
    assert len(dataset) == 20
    assert (result['written'], result['skipped_done'], result['skipped_no_label'], result['total']) == (20, 0, 0, 20)
    assert sorted(files_in(out)) == sorted([f'{n}.npz' for n in dataset.names] + [META_FILE, NO_LABEL_FILE])
    meta = json.loads((out / META_FILE).read_text())
    assert meta['method'] == 'ours' and meta['grid'] == [8, 8] and meta['rw'] is True
    for i in range(0, len(dataset), 3):
        item = dataset[i]
        data = load_map_file(map_path(out, item['name']))
        expected = np.flatnonzero(item['label'].numpy() > 0) + 1
        assert data['classes'].tolist() == expected.tolist()
        assert data['size'].tolist() == list(item['ori_shape'])
        for key in ('maps', 'rw'):
            assert data[key].shape == (len(expected), 8, 8)
            assert np.isfinite(data[key]).all()
            assert data[key].min() >= 0.0 and data[key].max() <= 1.0
            # min-max normalised per class (a constant map would be all 0)
            peaks = data[key].reshape(len(expected), -1).max(1)
            assert np.all((np.abs(peaks - 1) < 1e-3) | (peaks == 0))


def test_compute_maps_keeps_the_original_image_size(tmp_path, vim_model):
    from vim_wsss.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / 'VOC80', seed=1, num_train=3, num_val=1, size=80)
    dataset = eval_dataset(root, 'train_aug')  # resized to the model's 64 px input
    assert tuple(dataset[0]['img'].shape[-2:]) == (64, 64) and dataset[0]['ori_shape'] == (80, 80)
    result = compute_maps(vim_model, dataset, tmp_path / 'maps', rw=False, progress=False)
    assert result['written'] == 3
    for name in dataset.names:
        data = load_map_file(map_path(tmp_path / 'maps', name))
        assert data['size'].tolist() == [80, 80]
        assert data['maps'].shape[1:] == (8, 8) and 'rw' not in data
    make_pseudo(tmp_path / 'maps', root / 'JPEGImages', dataset.names, tmp_path / 'pseudo', 0.5, refine=[],
                progress=False)
    for name in dataset.names:
        assert read_mask(tmp_path / 'pseudo' / f'{name}.png').shape == (80, 80)


def test_compute_maps_deit_default_method(train_ds, tmp_path):
    model = tiny_model('deit_test_patch8_64')
    items = [train_ds[i] for i in range(3)]
    result = compute_maps(model, items, tmp_path / 'maps', progress=False)
    assert result['written'] == 3
    assert json.loads((tmp_path / 'maps' / META_FILE).read_text())['method'] == 'transformer_attr'
    for item in items:
        data = load_map_file(map_path(tmp_path / 'maps', item['name']))
        assert np.isfinite(data['maps']).all() and 0 <= data['maps'].min() and data['maps'].max() <= 1
        assert data['rw'].shape == data['maps'].shape


def test_compute_maps_resumes(cache, vim_model, tmp_path):
    out = tmp_path / 'maps'
    shutil.copytree(cache['dir'], out)
    dataset = cache['dataset']
    again = compute_maps(vim_model, dataset, out, progress=False)
    assert (again['written'], again['skipped_done'], again['total']) == (0, 20, 20)

    victim = dataset.names[5]
    before = load_map_file(map_path(out, victim))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob('*.npz')}
    map_path(out, victim).unlink()
    third = compute_maps(vim_model, dataset, out, progress=False)
    assert (third['written'], third['skipped_done']) == (1, 19)
    after = load_map_file(map_path(out, victim))
    assert after['classes'].tolist() == before['classes'].tolist()
    np.testing.assert_allclose(after['maps'], before['maps'], atol=5e-3)
    changed = [p.name for p in out.glob('*.npz') if stamps.get(p.name) != p.stat().st_mtime_ns]
    assert changed == [f'{victim}.npz']

    # resuming with other parameters is refused, naming the parameter
    with pytest.raises(ValueError, match='flip'):
        compute_maps(vim_model, dataset, out, flip=True, progress=False)


def test_compute_maps_nan_names_the_image(train_ds, vim_model, tmp_path, monkeypatch):
    items = [train_ds[i] for i in range(3)]
    real = seeds_module.multiscale_maps

    def poisoned(*args, **kwargs):
        maps = real(*args, **kwargs)
        maps[1, 0, 2, 3] = float('nan')
        return maps

    monkeypatch.setattr(seeds_module, 'multiscale_maps', poisoned)
    with pytest.raises(ValueError) as err:
        compute_maps(vim_model, items, tmp_path / 'maps', rw=False, progress=False)
    assert items[1]['name'] in str(err.value) and 'NaN' in str(err.value)
    assert items[0]['name'] not in str(err.value)
    assert not map_path(tmp_path / 'maps', items[1]['name']).exists()
    assert not [n for n in files_in(tmp_path / 'maps') if 'tmp' in n]


class _ZeroLabel:
    """A VOCClsDataset-like view (names, labels dict, items) where one image has no positive label."""

    def __init__(self, dataset, names, empty):
        self.base = dataset
        self.names = list(names)
        self.labels = {n: dataset.labels[n].copy() for n in self.names}
        self.labels[empty] = np.zeros(20, np.float32)
        self.index = {n: dataset.names.index(n) for n in self.names}

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        item = dict(self.base[self.index[self.names[i]]])
        item['label'] = torch.from_numpy(self.labels[self.names[i]])
        return item


@pytest.mark.parametrize('kind', ['list', 'dataset_view'])
def test_images_without_label_are_skipped_and_counted(kind, train_ds, vim_model, synthetic_root, tmp_path):
    names = train_ds.names[:3]
    empty = names[1]
    if kind == 'list':
        dataset = [train_ds[i] for i in range(3)]
        dataset[1] = dict(dataset[1], label=torch.zeros(20))
    else:
        dataset = _ZeroLabel(train_ds, names, empty)
    out = tmp_path / 'maps'
    result = compute_maps(vim_model, dataset, out, rw=False, progress=False)
    assert (result['written'], result['skipped_no_label'], result['total']) == (2, 1, 3)
    assert result['no_label'] == [empty]
    assert not map_path(out, empty).exists()
    assert (out / NO_LABEL_FILE).read_text().split() == [empty]
    again = compute_maps(vim_model, dataset, out, rw=False, progress=False)
    assert (again['written'], again['skipped_done'], again['skipped_no_label']) == (0, 2, 1)
    # downstream: the skipped image gets an all-background mask and all-background seeds
    make_pseudo(out, synthetic_root / 'JPEGImages', names, tmp_path / 'pseudo', 0.5, refine=[], progress=False)
    assert not read_mask(tmp_path / 'pseudo' / f'{empty}.png').any()
    gt = read_mask(synthetic_root / GT_DIR / f'{empty}.png')
    alone = eval_seeds(out, synthetic_root, [empty], 0.5, no_label=[empty])
    expected_bg_iou = 100 * ((gt == 0).sum() / (gt != 255).sum())
    assert alone['iou'][0] == pytest.approx(expected_bg_iou, abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# pseudo-masks
# ---------------------------------------------------------------------------------------------------------------
def _check_masks(out, names, seed_dir):
    for name in names:
        path = Path(out) / f'{name}.png'
        with Image.open(path) as img:
            assert img.mode == 'P'
        mask = read_mask(path)
        cache = load_map_file(map_path(seed_dir, name))
        assert mask.shape == tuple(cache['size'])
        allowed = {0, 255} | set(cache['classes'].tolist())
        assert set(np.unique(mask).tolist()) <= allowed


def test_make_pseudo_without_steps_is_thresholding_and_resumes(cache, synthetic_root, tmp_path):
    names = read_split(synthetic_root, 'train')
    images = synthetic_root / 'JPEGImages'
    out = tmp_path / 'pseudo'
    summary = make_pseudo(cache['dir'], images, names, out, 0.45, refine=[], progress=False)
    assert (summary['written'], summary['skipped_done'], summary['total']) == (15, 0, 15)
    _check_masks(out, names, cache['dir'])
    for name in names:
        data = load_map_file(map_path(cache['dir'], name))
        expected = seeds_from_maps(upsample_maps(data['maps'], tuple(data['size'])), data['classes'], 0.45)
        np.testing.assert_array_equal(read_mask(out / f'{name}.png'), expected)
    meta = json.loads((out / 'pseudo_meta.json').read_text())  # the parameters, incl. the seed cache's own record
    assert meta['bg_threshold'] == 0.45 and meta['refine'] == [] and meta['maps_meta']['method'] == 'ours'
    again = make_pseudo(cache['dir'], images, names, out, 0.45, refine=[], progress=False)
    assert (again['written'], again['skipped_done']) == (0, 15)

    # an ignore band: 255 exactly where the upsampled max lies in (low, high]
    band = make_pseudo(cache['dir'], images, names[:4], tmp_path / 'band', 0.5, high=0.7, low=0.3, refine=[],
                       progress=False)
    assert band['written'] == 4
    for name in names[:4]:
        data = load_map_file(map_path(cache['dir'], name))
        up = upsample_maps(data['maps'], tuple(data['size']))
        expected = seeds_from_maps(up, data['classes'], 0.0, high=0.7, low=0.3)
        got = read_mask(tmp_path / 'band' / f'{name}.png')
        np.testing.assert_array_equal(got, expected)
        best = up.max(0).values.numpy()
        assert np.array_equal(got == 255, (best > 0.3) & (best <= 0.7))


@pytest.mark.parametrize('refine', [[], ['par'], ['crf'], ['rw', 'par', 'crf']], ids=lambda r: '-'.join(r) or 'none')
def test_make_pseudo_refinement_chains(refine, cache, synthetic_root, tmp_path):
    names = read_split(synthetic_root, 'train')[:3]
    summary = make_pseudo(cache['dir'], synthetic_root / 'JPEGImages', names, tmp_path / 'out', 0.4,
                          refine=refine, progress=False)
    assert summary['written'] == 3
    _check_masks(tmp_path / 'out', names, cache['dir'])


def test_pseudo_label_checks_inputs(cache, synthetic_root):
    from vim_wsss.data.voc import read_image

    name = read_split(synthetic_root, 'train')[0]
    data = load_map_file(map_path(cache['dir'], name))
    image = read_image(synthetic_root / 'JPEGImages' / f'{name}.jpg')
    with pytest.raises(ValueError, match='must be the first step'):
        pseudo_label(data, image, 0.4, refine=['par', 'rw'])
    with pytest.raises(ValueError, match='unknown refinement'):
        pseudo_label(data, image, 0.4, refine=['dcrf'])
    with pytest.raises(ValueError, match='cached maps were made for'):
        pseudo_label(data, image[:32], 0.4, refine=[])
    no_rw = {k: v for k, v in data.items() if k != 'rw'}
    with pytest.raises(ValueError, match='no random-walk maps'):
        pseudo_label(no_rw, image, 0.4, refine=['rw'])
    # with 'rw' the random-walk maps are the ones thresholded
    walked = pseudo_label(data, image, 0.4, refine=['rw'])
    np.testing.assert_array_equal(walked, seeds_from_maps(upsample_maps(data['rw'], image.shape[:2]),
                                                          data['classes'], 0.4))


def test_make_pseudo_needs_a_seed_cache(tmp_path, synthetic_root):
    with pytest.raises(FileNotFoundError, match='not a seed cache'):
        make_pseudo(tmp_path, synthetic_root / 'JPEGImages', ['x'], tmp_path / 'out', 0.5, refine=[],
                    progress=False)


def test_interrupted_make_pseudo_leaves_only_complete_masks(cache, synthetic_root, tmp_path, monkeypatch):
    names = read_split(synthetic_root, 'train')[:6]
    out = tmp_path / 'pseudo'
    done_before_crash = 3
    calls = {'n': 0}
    real_one = pseudo_module._one
    real_save = Image.Image.save

    def crashing_save(self, fp, *args, **kwargs):
        if calls['n'] > done_before_crash:  # the crash hits in the middle of writing the PNG bytes
            Path(fp).write_bytes(b'\x89PNG\r\n\x1a\n truncated')
            raise RuntimeError('simulated crash')
        return real_save(self, fp, *args, **kwargs)

    def counting_one(task):
        calls['n'] += 1
        return real_one(task)

    monkeypatch.setattr(pseudo_module, '_one', counting_one)
    monkeypatch.setattr(Image.Image, 'save', crashing_save)
    with pytest.raises(RuntimeError, match='simulated crash'):
        make_pseudo(cache['dir'], synthetic_root / 'JPEGImages', names, out, 0.4, refine=[], progress=False)
    monkeypatch.undo()

    # exactly the finished masks, each complete; no half-written file under any name, the lock released
    assert files_in(out) == sorted([f'{n}.png' for n in names[:done_before_crash]] + ['pseudo_meta.json'])
    _check_masks(out, names[:done_before_crash], cache['dir'])
    rerun = make_pseudo(cache['dir'], synthetic_root / 'JPEGImages', names, out, 0.4, refine=[], progress=False)
    assert (rerun['written'], rerun['skipped_done']) == (len(names) - done_before_crash, done_before_crash)
    _check_masks(out, names, cache['dir'])


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------
def test_eval_masks_gt_as_prediction_and_missing_file(synthetic_root, tmp_path):
    names = read_split(synthetic_root, 'train')
    pred = tmp_path / 'pred'
    pred.mkdir()
    for name in names:
        shutil.copy(synthetic_root / GT_DIR / f'{name}.png', pred / f'{name}.png')
    perfect = eval_masks(pred, synthetic_root, 'train')
    assert perfect['miou'] == pytest.approx(100.0) and perfect['miou_valid'] == pytest.approx(100.0)
    assert perfect['acc'] == pytest.approx(100.0)
    assert perfect['ignored'] == 0 and perfect['images'] == len(names)
    assert len(perfect['iou']) == 21

    # one prediction left entirely as 255: its scored pixels are misses, and counted as ignored
    gts = [read_mask(synthetic_root / GT_DIR / f'{n}.png') for n in names]
    save_mask(pred / f'{names[0]}.png', np.full_like(gts[0], 255))
    partial = eval_masks(pred, synthetic_root, names=names)
    scored = [(g != 255).sum() for g in gts]
    assert partial['ignored'] == pytest.approx(100 * scored[0] / sum(scored), abs=1e-3)
    assert partial['miou'] < 100.0
    assert partial['miou_valid'] == pytest.approx(100.0)  # what the mask did label is right

    (pred / f'{names[4]}.png').unlink()
    with pytest.raises(FileNotFoundError, match=f'{names[4]}.png'):
        eval_masks(pred, synthetic_root, 'train')


def _handmade_root(tmp_path, gts):
    """A VOC-like root with only GT masks (what the sweep / baselines read)."""
    root = tmp_path / 'gt_root'
    for name, gt in gts.items():
        save_mask(root / GT_DIR / f'{name}.png', gt)
    return root


def test_sweep_chooses_on_tune_and_scores_on_score(tmp_path):
    # 4x4 images, GT: left two columns class 1, right two background
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 1
    root = _handmade_root(tmp_path, {'tune_img': gt, 'score_img': gt})
    seed_dir = tmp_path / 'maps'
    # maps stored at image resolution, with 0 and 1 present so upsampling + min-max keeps the values
    tune_map = np.tile(np.array([1.0, 0.7, 0.3, 0.0], np.float32), (4, 1))[None]   # right cut between 0.3 and 0.7
    score_map = np.tile(np.array([1.0, 0.9, 0.6, 0.0], np.float32), (4, 1))[None]  # right cut between 0.6 and 0.9
    save_map_file(map_path(seed_dir, 'tune_img'), np.array([1]), tune_map, (4, 4))
    save_map_file(map_path(seed_dir, 'score_img'), np.array([1]), score_map, (4, 4))

    result = sweep_bg_threshold(seed_dir, root, [0.2, 0.5, 0.8], ['tune_img'], ['score_img'],
                                out_dir=tmp_path / 'sweep', tag='demo')
    assert result['best_threshold'] == 0.5  # perfect on the tune image
    assert result['tune_miou'][1] == pytest.approx(100.0)
    # at 0.5 the score image labels column 2 as class 1 too: class 1 IoU 8/12, background 4/8
    assert result['score']['miou'] == pytest.approx(100 * (8 / 12 + 4 / 8) / 2, abs=1e-3)
    assert result['score_miou'][1] == pytest.approx(result['score']['miou'])
    assert result['oracle_threshold'] == 0.8 and result['oracle_miou'] == pytest.approx(100.0)
    assert (result['tune_images'], result['score_images']) == (1, 1)
    png, js = Path(result['png']), Path(result['json'])
    assert png == tmp_path / 'sweep' / 'demo_sweep.png' and js == tmp_path / 'sweep' / 'demo_sweep.json'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert json.loads(js.read_text())['best_threshold'] == 0.5

    # swapping the roles moves the choice: it follows the tune names only
    swapped = sweep_bg_threshold(seed_dir, root, [0.2, 0.5, 0.8], ['score_img'], ['tune_img'])
    assert swapped['best_threshold'] == 0.8 and 'json' not in swapped
    with pytest.raises(ValueError, match='tune_names is empty'):
        sweep_bg_threshold(seed_dir, root, [0.5], [], ['score_img'])


def test_sweep_on_the_synthetic_cache(cache, synthetic_root, tmp_path):
    tune = split_difference(synthetic_root, 'train_aug', 'train')
    score = read_split(synthetic_root, 'train')
    assert len(tune) == 25 and not set(tune) & set(score)
    tune = tune[:5]  # the ones in the cache
    thresholds = [0.2, 0.4, 0.6]
    result = sweep_bg_threshold(cache['dir'], synthetic_root, thresholds, tune, score, maps_key='rw',
                                out_dir=tmp_path)
    pick = thresholds.index(result['best_threshold'])
    assert result['tune_miou'][pick] == max(result['tune_miou'])
    assert result['score']['miou'] == pytest.approx(result['score_miou'][pick])
    assert all(0.0 <= m <= 100.0 for m in result['tune_miou'] + result['score_miou'])
    # the sweep's score equals scoring the seeds made at that threshold
    direct = eval_seeds(cache['dir'], synthetic_root, score, result['best_threshold'], maps_key='rw')
    assert direct['miou'] == pytest.approx(result['score']['miou'], abs=1e-3)
    assert (tmp_path / 'seeds_sweep.png').is_file() and (tmp_path / 'seeds_sweep.json').is_file()


def test_eval_baselines(synthetic_root, train_ds, tmp_path):
    names = train_ds.names
    result = eval_baselines(synthetic_root, names, train_ds.labels)
    assert set(result) == {'background', 'whole_image', 'centre_blob'}
    bg_only = result['background']['iou']
    assert bg_only[0] > 0 and all(v in (0.0, None) for v in bg_only[1:])
    for metrics in result.values():
        assert 0.0 <= metrics['miou'] <= 100.0 and metrics['images'] == len(names)

    # hand-made: an image entirely of class 3 is perfect for whole_image; the centre blob misses its border
    root = _handmade_root(tmp_path, {'full': np.full((10, 10), 3, np.uint8)})
    label = np.zeros(20, np.float32)
    label[2] = 1
    hand = eval_baselines(root, ['full'], {'full': label})
    assert hand['whole_image']['miou'] == pytest.approx(100.0)
    blob = baseline_mask('centre_blob', [3], (10, 10))
    assert hand['centre_blob']['iou'][3] == pytest.approx(100 * (blob == 3).sum() / 100, abs=1e-3)
    assert hand['centre_blob']['iou'][0] == pytest.approx(0.0)
    assert not baseline_mask('background', [3], (10, 10)).any()


def test_save_overlays(cache, synthetic_root, tmp_path):
    names = read_split(synthetic_root, 'train')[:2]
    out = save_overlays(names, synthetic_root / 'JPEGImages',
                        {'gt': synthetic_root / GT_DIR, 'seeds': seed_source(cache['dir'], 0.5)},
                        tmp_path / 'fig' / 'overlay.png')
    assert out == tmp_path / 'fig' / 'overlay.png'
    with Image.open(out) as img:
        width, height = img.size
    assert width > height  # 3 columns (image, gt, seeds) x 2 rows
    assert not [n for n in os.listdir(out.parent) if n != 'overlay.png']
    with pytest.raises(FileNotFoundError):
        save_overlays(names, synthetic_root / 'JPEGImages', {'none': tmp_path / 'empty'}, tmp_path / 'x.png')
