"""Acceptance at the real shapes: official-format ViM-S / DeiT-S files, the VOC configs at 448 px (L = 785), VOC image
sizes, every stage through the installed ``vim-wsss``, and the VOC pipeline config with iteration overrides.

The run happens in a scratch folder laid out as a user's checkout: ``checkpoints/`` holds the official file names
(random weights, official keys and shapes, saved as the releases save them), ``data/VOCdevkit/VOC2012`` the data,
``configs`` the project's configs, so the configs' default paths are the ones exercised. Only iteration counts,
batch sizes, workers, the test resize (short side 448 instead of 512: half the slide windows) and (for ViM-S on
2 CPU cores) the affinity random walk are overridden.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from official_files import official_deit_state_dict, official_vim_state_dict, save_official_deit, save_official_vim

pytest.importorskip('mmseg')

REPO = Path(__file__).resolve().parents[1]
VOC_SHAPES = [(375, 500), (500, 375), (333, 500), (500, 333)]  # (H, W) as in JPEGImages
SHORT = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
         'train_dataloader.batch_size=1', 'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
         'val_dataloader.batch_size=1', 'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False']
NO_SEG_VAL = ['val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']  # test-seg scores it: no second pass
TEST_448 = 'test_dataloader.dataset.pipeline.1.scale=(2048,448)'  # short side 448: 2 slide windows, not 4


def _crop_to_voc_sizes(root: Path) -> None:
    """Cut every image and mask of a 500 px synthetic set to a VOC-like size, in place (labels come from masks)."""
    names = sorted(p.stem for p in (root / 'JPEGImages').glob('*.jpg'))
    for i, name in enumerate(names):
        h, w = VOC_SHAPES[i % len(VOC_SHAPES)]
        image = cv2.imread(str(root / 'JPEGImages' / f'{name}.jpg'))
        cv2.imwrite(str(root / 'JPEGImages' / f'{name}.jpg'), image[:h, :w], [cv2.IMWRITE_JPEG_QUALITY, 90])
        for folder in ('SegmentationClass', 'SegmentationClassAug'):
            path = root / folder / f'{name}.png'
            if path.is_file():
                from vim_wsss.data.voc import read_mask, save_mask

                save_mask(path, read_mask(path)[:h, :w])
    (root / 'cls_labels_onehot.npy').unlink()  # the crops change which classes are present


@pytest.fixture(scope='module')
def checkout(tmp_path_factory):
    """A user's checkout: official-format checkpoints, a VOC-layout folder at VOC sizes, the project's configs."""
    from vim_wsss.data.synthetic import make_synthetic

    top = tmp_path_factory.mktemp('voc_checkout')
    root = make_synthetic(top / 'data' / 'VOCdevkit' / 'VOC2012', seed=3, num_train=3, num_val=2, size=500,
                          train_fraction=0.34)  # train_aug 3, of which train 1 (scored) and 2 to tune on
    _crop_to_voc_sizes(root)
    (top / 'configs').symlink_to(REPO / 'configs')
    (top / 'checkpoints').mkdir()
    scale = dict(scale=0.02)  # trained-model magnitudes: 24 random layers at 0.5 would overflow
    save_official_vim(top / 'checkpoints' / 'vim_s_midclstok_80p5acc.pth', official_vim_state_dict(384, **scale))
    save_official_deit(top / 'checkpoints' / 'deit_small_patch16_224-cd65a155.pth',
                       official_deit_state_dict(384, **scale))
    return top


def test_images_have_voc_sizes(checkout):
    shapes = {cv2.imread(str(p)).shape[:2] for p in (checkout / 'data/VOCdevkit/VOC2012/JPEGImages').glob('*.jpg')}
    assert shapes == set(VOC_SHAPES)


def test_vim_s_stage_by_stage(checkout, run_cli):
    def cli(*args):
        result = run_cli(*args, cwd=checkout, timeout=900)
        assert result.returncode == 0, f'vim-wsss {args[0]} failed:\n{result.stderr[-4000:]}'
        return result

    data = ['--data-root', 'data/VOCdevkit/VOC2012']
    cls_cfg = 'configs/cls/vim-s_voc12aug-448.py'
    cli('train-cls', cls_cfg, *data, '--work-dir', 'w/cls', '--cfg-options', *SHORT)
    ckpt = 'w/cls/iter_2.pth'
    cli('make-seeds', cls_cfg, ckpt, *data, '--out', 'w/maps', '--no-rw', '--batch-size', '2')
    meta = json.loads((checkout / 'w/maps/maps_meta.json').read_text())
    assert meta, 'make-seeds wrote no metadata'
    maps = sorted((checkout / 'w/maps').glob('*.npz'))
    assert maps, 'no maps written'
    with np.load(maps[0]) as cached:
        assert all(np.isfinite(cached[k]).all() for k in cached.files)
    cli('eval-masks', 'w/maps', *data, '--sweep', '0.2', '0.4', '0.6', '--tune-split', 'train_aug')
    cli('make-pseudo', 'w/maps', *data, '--bg-threshold', '0.4', '--out', 'w/pseudo', '--refine', 'par', 'crf')
    masks = sorted((checkout / 'w/pseudo').glob('*.png'))
    assert len(masks) >= 1
    first = masks[0].stem
    image = cv2.imread(str(checkout / 'data/VOCdevkit/VOC2012/JPEGImages' / f'{first}.jpg'))
    assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape[:2] == image.shape[:2]  # VOC size, not 448
    seg_cfg = 'configs/seg/segformer_vim-s_1xb8-20k_voc12aug-448.py'
    cli('train-seg', seg_cfg, *data, '--pseudo-dir', 'w/pseudo', '--work-dir', 'w/seg', '--cfg-options',
        f'model.backbone.pretrained={ckpt}', *SHORT, *NO_SEG_VAL)
    out = cli('test-seg', seg_cfg, 'w/seg/iter_2.pth', *data, '--work-dir', 'w/test', '--cfg-options', TEST_448)
    assert 'mIoU' in out.stdout


def test_voc_pipeline_both_backbones(checkout, run_cli):
    short = dict(o.split('=') for o in SHORT)
    short = {k: {'True': True, 'False': False}.get(v, int(v) if v.isdigit() else v) for k, v in short.items()}
    seg_short = dict(short, **{k: None for k in ('val_cfg', 'val_dataloader', 'val_evaluator')})
    seg_short['test_dataloader.dataset.pipeline.1.scale'] = (2048, 448)
    override = checkout / 'voc_short.py'  # a user's own config on top of the shipped one, as data
    override.write_text(
        f"_base_ = '{REPO / 'configs/pipeline/voc12_vim-s_vs_deit-s.py'}'\n"
        "seeds = dict(thresholds=[0.3, 0.5])\n"
        "maps = dict(rw=False, batch_size=2)  # the ViM-S affinity of one 448 image takes minutes on 2 CPU cores\n"
        "pseudo = dict(refine=['par', 'crf'], workers=0)\n"
        f"backbones = dict(vim=dict(cls_options={short!r}, seg_options={seg_short!r}),\n"
        f"                 deit=dict(cls_options={short!r}, seg_options={seg_short!r}))\n")
    result = run_cli('pipeline', override, '--work-dir', 'w/pipeline', cwd=checkout, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((checkout / 'w/pipeline/report.json').read_text())
    for name in ('vim', 'deit'):
        row = report['backbones'][name]
        for key in ('cls_map', 'seed_miou', 'pseudo_miou', 'seg_miou', 'seg_gt_miou'):
            assert row[key] is not None and 0 <= row[key] <= 100, (name, key, row[key])
    assert os.path.isfile(checkout / 'w/pipeline/report.md')
