"""Bad data through the installed ``vim-wsss`` entry point: one line naming the file and the fix, non-zero exit, no
traceback (also when the error is raised in a DataLoader worker or while mmengine builds the dataset); then the
mmseg data path of the seg configs (``CheckedPascalVOCDataset``, checked loading transforms) in process."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from vim_wsss.data.voc import DataError, read_mask, read_split, save_mask

pytest.importorskip('mmseg')

SEG_CONFIG = 'configs/seg/segformer_vim-mini_1xb8-320_synthetic-64.py'
SEG_OPTIONS = ['--cfg-options', 'train_cfg.max_iters=1', 'train_cfg.val_interval=1',
               'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2']  # workers as configured (2)
CLS_CONFIG = 'configs/cls/vim-mini_synthetic-64.py'


@pytest.fixture()
def voc(synthetic_root, tmp_path):
    """A private copy of the tiny synthetic dataset, with the GT masks copied as a pseudo-mask folder."""
    root = shutil.copytree(synthetic_root, tmp_path / 'VOC2012')
    shutil.copytree(root / 'SegmentationClassAug', tmp_path / 'pseudo')
    return root


def assert_user_error(result, *patterns):
    """Non-zero exit, no traceback, and every regex in ``patterns`` found in stderr."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'Traceback' not in result.stderr, result.stderr[-4000:]
    for pattern in patterns:
        assert re.search(pattern, result.stderr), (pattern, result.stderr[-2000:])


def _train_seg(run_cli, root, *extra):
    return run_cli('train-seg', SEG_CONFIG, '--data-root', root, '--pseudo-dir', root.parent / 'pseudo',
                   '--work-dir', root.parent / 'work', *SEG_OPTIONS, *extra, timeout=300)


def _damage_masks(folder, names, kind):
    """Give each mask a label 37 (``kind='label'``) or the wrong size (``kind='size'``)."""
    for name in names:
        path = folder / f'{name}.png'
        if kind == 'label':
            mask = read_mask(path)
            mask[0, 0] = 37
        else:
            mask = np.zeros((32, 40), np.uint8)
        save_mask(path, mask)


@pytest.mark.parametrize('kind,where', [('label', 'pseudo'), ('size', 'pseudo'), ('label', 'gt')])
def test_train_seg_checks_pseudo_masks_and_gt_masks(run_cli, voc, kind, where):
    """Pseudo-masks are checked in training (DataLoader workers), GT masks in the validation run."""
    folder, split = (voc.parent / 'pseudo', 'train_aug') if where == 'pseudo' else (voc / 'SegmentationClass', 'val')
    _damage_masks(folder, read_split(voc, split), kind)
    mask = rf'mask {re.escape(str(folder))}/\d+_\d+\.png'
    if kind == 'label':
        patterns = (mask + r' has label values \[37\] outside 0\.\.20 and 255', 'regenerate it')
    else:
        patterns = (mask + r' is 32x40 \(HxW\) but image .*/JPEGImages/\d+_\d+\.jpg is 64x64', 'regenerate')
    assert_user_error(_train_seg(run_cli, voc), *patterns)


def test_train_seg_names_a_missing_image_folder(run_cli, voc):
    shutil.rmtree(voc / 'JPEGImages')
    assert_user_error(_train_seg(run_cli, voc), rf'image folder {voc}/JPEGImages not found', '--data-root')


def test_train_seg_names_a_truncated_jpeg(run_cli, voc):
    for name in read_split(voc, 'train_aug'):
        path = voc / 'JPEGImages' / f'{name}.jpg'
        path.write_bytes(path.read_bytes()[:300])
    assert_user_error(_train_seg(run_cli, voc), rf'image {voc}/JPEGImages/\d+_\d+\.jpg', 'corrupt or truncated',
                      'remove its name from the split list')


def test_train_cls_names_an_empty_jpeg_from_a_worker(run_cli, voc, tmp_path):
    for name in read_split(voc, 'train_aug'):
        (voc / 'JPEGImages' / f'{name}.jpg').write_bytes(b'')
    result = run_cli('train-cls', CLS_CONFIG, '--data-root', voc, '--work-dir', tmp_path / 'cls', '--cfg-options',
                     'train_cfg.max_iters=1', 'train_dataloader.num_workers=2', timeout=300)  # as the VOC config
    assert_user_error(result, rf'cannot decode image {voc}/JPEGImages/\d+_\d+\.jpg', 'corrupt or truncated')
    assert 'skip_bad' not in result.stderr  # no command-line flag offers it


def test_eval_masks_rejects_duplicate_names(run_cli, voc):
    names = read_split(voc, 'val')
    (voc / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('\n'.join(names + [names[4]]) + '\n')
    result = run_cli('eval-masks', voc / 'SegmentationClassAug', '--data-root', voc, '--split', 'val', timeout=120)
    assert_user_error(result, rf'val.txt lists 1 name\(s\) more than once \({names[4]}\)', 'one line per image')


def test_eval_masks_names_both_files_of_a_size_mismatch(run_cli, voc):
    name = read_split(voc, 'val')[2]
    pred = voc.parent / 'pseudo'
    save_mask(pred / f'{name}.png', np.zeros((32, 40), np.uint8))
    result = run_cli('eval-masks', pred, '--data-root', voc, '--split', 'val', timeout=120)
    assert_user_error(result, rf'mask {pred}/{name}.png is 32x40 \(HxW\) but its ground truth '
                      rf'{voc}/SegmentationClassAug/{name}.png is 64x64')


def build(root, loader='train_dataloader', **dataset):
    """The config's dataset of ``loader`` on ``root`` (pseudo-masks from ``<root>/../pseudo`` for training), built
    through mmseg's registry as the Runner builds it."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import vim_wsss.seg  # noqa: F401  (registers the checked dataset and transforms)

    init_default_scope('mmseg')
    cfg = Config.fromfile(SEG_CONFIG)[loader].dataset
    cfg.data_root = str(root)
    if loader == 'train_dataloader':
        cfg.data_prefix.seg_map_path = str(root.parent / 'pseudo')
    cfg.update(dataset)
    return DATASETS.build(cfg)


def test_items_load_as_with_plain_pascal_voc(voc):
    dataset = build(voc, 'val_dataloader')
    name = read_split(voc, 'val')[0]
    item = dataset[0]
    assert len(dataset) == 12 and item['data_samples'].img_path.endswith(f'{name}.jpg')
    gt = item['data_samples'].gt_sem_seg.data.squeeze(0).numpy()
    np.testing.assert_array_equal(gt, read_mask(voc / 'SegmentationClass' / f'{name}.png'))
    assert len(build(voc)) == 40 and build(voc)[3]['inputs'].shape == (3, 64, 64)


def test_duplicates_and_trainaug_alias(voc):
    lists = voc / 'ImageSets' / 'Segmentation'
    names = read_split(voc, 'train_aug')
    (lists / 'train_aug.txt').rename(lists / 'trainaug.txt')  # mmseg's name for the same list
    dataset = build(voc)
    assert [dataset.get_data_info(i)['img_path'] for i in range(2)] == [str(voc / 'JPEGImages' / f'{n}.jpg')
                                                                        for n in names[:2]]
    (lists / 'trainaug.txt').write_text('\n'.join(names + names[7:8]) + '\n')
    with pytest.raises(DataError, match=rf'^split list .*trainaug.txt lists 1 name\(s\) more than once \({names[7]}\)'):
        build(voc)  # the message as raised: no 'class `CheckedPascalVOCDataset` in ...' prefix from the registry


def test_missing_mask_folder_and_masks(voc):
    name = read_split(voc, 'train_aug')[5]
    (voc.parent / 'pseudo' / f'{name}.png').unlink()
    with pytest.raises(FileNotFoundError, match=rf'1 of the 40 masks listed .*train_aug.txt are missing \(first: '
                       rf'{voc.parent}/pseudo/{name}.png\); make masks .*make-pseudo'):
        build(voc)
    shutil.rmtree(voc.parent / 'pseudo')
    with pytest.raises(FileNotFoundError, match=rf'^mask folder {voc.parent}/pseudo not found; pass --pseudo-dir'):
        build(voc)
    (voc / 'JPEGImages' / f'{name}.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=rf'1 of the 40 images listed .*train_aug.txt are missing \(first: '
                       rf'{voc}/JPEGImages/{name}.jpg\); restore them or remove their names from the list'):
        build(voc, 'val_dataloader', ann_file='ImageSets/Segmentation/train_aug.txt',
              data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'))
    shutil.rmtree(voc / 'ImageSets')
    with pytest.raises(FileNotFoundError, match=rf'{voc} has no ImageSets/Segmentation/ folder'):
        build(voc, 'val_dataloader')


def test_mask_checks_in_the_pipeline(voc):
    names = read_split(voc, 'val')
    gt = voc / 'SegmentationClass'
    mask = read_mask(gt / f'{names[0]}.png')
    mask[5, 5] = 21
    save_mask(gt / f'{names[0]}.png', mask)
    save_mask(gt / f'{names[1]}.png', np.zeros((64, 63), np.uint8))
    save_mask(gt / f'{names[2]}.png', read_mask(gt / f'{names[2]}.png'))  # untouched content: still fine
    dataset = build(voc, 'val_dataloader')
    with pytest.raises(DataError, match=rf'mask {gt}/{names[0]}.png has label values \[21\]'):
        dataset[0]
    with pytest.raises(DataError, match=rf'mask {gt}/{names[1]}.png is 64x63 \(HxW\) but image '
                       rf'{voc}/JPEGImages/{names[1]}.jpg is 64x64'):
        dataset[1]
    assert dataset[2]['data_samples'].gt_sem_seg.data.shape == (1, 64, 64)
    (gt / f'{names[2]}.png').write_bytes(b'not a png')
    with pytest.raises(DataError, match=rf'cannot decode mask {gt}/{names[2]}.png'):
        dataset[2]
