"""Stage-1 classifier: the mmengine model / metric / hook, and the train / resume / load functions of wsss.train."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vim_wsss.models import CheckpointError, create_model
from vim_wsss.models.classifier import (ClsMetricsHook, MultiLabelClassifier, MultiLabelMetric, average_precision,
                                        multilabel_scores)
from vim_wsss.wsss.train import (_check_splits, backbone_spec, find_checkpoint, load_classifier, load_config,
                                 read_cls_metrics, train_classifier)

CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'cls' / 'deit-mini_synthetic-64.py'
TINY = dict(name='deit_test_patch8_64')


def tiny_options(root, max_iters=4):
    """cfg_options shrinking the DeiT-mini synthetic config to a few iterations of the 64 px test model."""
    return {
        'data_root': str(root),
        'model.backbone.name': 'deit_test_patch8_64',
        'train_dataloader.dataset.transform.crop_size': 64,
        'val_dataloader.dataset.transform.size': 64,
        'test_dataloader.dataset.transform.size': 64,
        'train_dataloader.batch_size': 4,
        'val_dataloader.batch_size': 12,
        'train_cfg.max_iters': max_iters,
        'train_cfg.val_interval': 2,
        'default_hooks.checkpoint.interval': 2,
        'default_hooks.logger.interval': 1,
        'param_scheduler.0.start_factor': 1.0,
        'param_scheduler.0.end': 1,
        'param_scheduler.1.begin': 1,
        'param_scheduler.1.end': max_iters,
    }


def val_images(root, n=6):
    from vim_wsss.data.datasets import VOCClsDataset

    ds = VOCClsDataset(root, 'val', transform=dict(kind='eval', size=64))
    return torch.stack([ds[i]['img'] for i in range(n)])


# ---------------------------------------------------------------------------------------------------------------
# average precision / multilabel scores (hand-computed)
# ---------------------------------------------------------------------------------------------------------------
def test_average_precision_hand_examples():
    # ranks 1..4, positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # positives at ranks 2 and 4: (1/2 + 2/4) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    # input order does not matter, only the score order: same as the first example, shuffled
    assert average_precision(np.array([0.7, 0.6, 0.9, 0.8]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # one positive ranked last of three
    assert average_precision(np.array([3.0, 2.0, -1.0]), np.array([0, 0, 1])) == pytest.approx(1 / 3)
    # all positive -> 1; perfect ranking -> 1
    assert average_precision(np.array([0.1, 0.5]), np.array([1, 1])) == pytest.approx(1.0)
    assert average_precision(np.array([5.0, 4.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    # ties are broken by order (stable): the earlier element ranks first
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(1.0)
    # no positive -> NaN
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def _toy():
    # class 0: scores (2, 1, -1), targets (1, 0, 1) -> AP 5/6; class 1: positive ranked first -> AP 1;
    # class 2: no positive, never predicted -> left out of mAP and macro-F1
    logits = np.array([[2.0, -1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -2.0, -1.0]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    return logits, targets


def test_multilabel_scores_hand_example():
    logits, targets = _toy()
    s = multilabel_scores(logits, targets)
    assert s['mAP'] == pytest.approx(100 * (5 / 6 + 1) / 2)
    # decisions at 0: class 0 tp=1 fp=1 fn=1; class 1 tp=1 -> micro 2*2/(4+1+1); macro mean(0.5, 1.0)
    assert s['f1_micro'] == pytest.approx(100 * 4 / 6)
    assert s['f1_macro'] == pytest.approx(75.0)
    assert s['num_images'] == 3
    # a higher threshold keeps only the logit 2: class 0 tp=1 fn=1, class 1 fn=1 -> micro 2/(2+2)
    high = multilabel_scores(logits, targets, threshold=1.5)
    assert high['f1_micro'] == pytest.approx(50.0)
    assert high['mAP'] == pytest.approx(s['mAP'])  # ranking metric: threshold-free


def test_multilabel_metric_process_and_compute():
    logits, targets = _toy()
    metric = MultiLabelMetric()
    assert metric.prefix == 'cls'
    # labels in the samples for the first two images, in the batch for the third
    metric.process({}, [dict(logits=torch.tensor(logits[i]), label=torch.tensor(targets[i])) for i in range(2)])
    metric.process({'label': torch.tensor(targets[2:])}, [dict(logits=torch.tensor(logits[2]), label=None)])
    out = metric.compute_metrics(metric.results)
    assert out['mAP'] == pytest.approx(100 * 11 / 12)
    assert out['f1_macro'] == pytest.approx(75.0)
    # mmengine's evaluate() adds the prefix
    prefixed = metric.evaluate(3)
    assert prefixed['cls/mAP'] == pytest.approx(100 * 11 / 12)


def test_multilabel_metric_needs_labels():
    with pytest.raises(ValueError, match='needs labels'):
        MultiLabelMetric().process({}, [dict(logits=torch.zeros(3), label=None)])


def test_cls_metrics_hook_appends_history(tmp_path):
    hook = ClsMetricsHook()
    runner = SimpleNamespace(work_dir=str(tmp_path), rank=0, iter=2)
    hook.after_val_epoch(runner, {'cls/mAP': np.float64(12.5), 'cls/f1_micro': 3.0})
    runner.iter = 4
    hook.after_val_epoch(runner, {'cls/mAP': 20.0, 'cls/f1_micro': 4.0})
    hook.after_val_epoch(runner, None)  # nothing to record
    hook.after_val_epoch(SimpleNamespace(work_dir=str(tmp_path), rank=1, iter=6), {'cls/mAP': 99.0})  # not rank 0
    history = json.loads((tmp_path / 'cls_metrics.json').read_text())
    assert history == [dict(iter=2, **{'cls/mAP': 12.5, 'cls/f1_micro': 3.0}),
                       dict(iter=4, **{'cls/mAP': 20.0, 'cls/f1_micro': 4.0})]
    assert read_cls_metrics(tmp_path) == history
    assert read_cls_metrics(tmp_path / 'nothing') == []
    assert not list(tmp_path.glob('.tmp*'))


# ---------------------------------------------------------------------------------------------------------------
# MultiLabelClassifier
# ---------------------------------------------------------------------------------------------------------------
def test_classifier_modes_and_losses():
    torch.manual_seed(0)
    model = MultiLabelClassifier(backbone=dict(TINY), num_classes=20).eval()
    img = torch.randn(2, 3, 64, 64)
    label = torch.zeros(2, 20)
    label[0, 3] = label[1, 7] = label[1, 8] = 1
    with torch.no_grad():
        logits = model(img, mode='tensor')
        assert logits.shape == (2, 20)
        torch.testing.assert_close(logits, model.backbone(img))
        loss = model(img, label, mode='loss')['loss']
        torch.testing.assert_close(loss, F.multilabel_soft_margin_loss(logits, label))
        preds = model(img, label, mode='predict', name=['a', 'b'])
    assert [p['name'] for p in preds] == ['a', 'b']
    torch.testing.assert_close(torch.stack([p['logits'] for p in preds]), logits)
    torch.testing.assert_close(preds[1]['label'], label[1])
    assert model(img, mode='predict')[0]['label'] is None

    bce = MultiLabelClassifier(backbone=dict(TINY), num_classes=20, loss='bce').eval()
    bce.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(bce(img, label, mode='loss')['loss'],
                                   F.binary_cross_entropy_with_logits(logits, label))

    with pytest.raises(ValueError, match='needs labels'):
        model(img, mode='loss')
    with pytest.raises(ValueError, match='mode must be'):
        model(img, mode='features')
    with pytest.raises(ValueError, match='loss must be one of'):
        MultiLabelClassifier(backbone=dict(TINY), loss='focal')
    with pytest.raises(ValueError, match="needs a 'name'"):
        MultiLabelClassifier(backbone=dict(pretrained=None))


def test_classes_are_registered_in_mmengine_root_registries():
    from mmengine.registry import HOOKS, METRICS, MODELS

    model = MODELS.build(dict(type='MultiLabelClassifier', backbone=dict(TINY), num_classes=5))
    assert isinstance(model, MultiLabelClassifier)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)
    assert isinstance(METRICS.build(dict(type='MultiLabelMetric', threshold=0.5)), MultiLabelMetric)
    assert isinstance(HOOKS.build(dict(type='ClsMetricsHook')), ClsMetricsHook)


# ---------------------------------------------------------------------------------------------------------------
# config helpers, checkpoints
# ---------------------------------------------------------------------------------------------------------------
def test_load_config_repoints_every_dataloader_and_backbone_spec(tmp_path):
    cfg = load_config(CONFIG, {'data_root': str(tmp_path), 'model.backbone.name': 'deit_test_patch8_64'})
    assert cfg.data_root == str(tmp_path)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[key]['dataset']['root'] == str(tmp_path)
    spec = backbone_spec(cfg)
    assert spec == dict(name='deit_test_patch8_64', num_classes=20, kwargs={})
    # the paper config: pretrained is dropped, the other backbone kwargs are kept
    big = backbone_spec(CONFIG.parent / 'vim-s_voc12aug-448.py')
    assert big['name'] == 'vim_small_patch16_224'
    assert big['kwargs'] == dict(img_size=448, drop_path_rate=0.1)
    with pytest.raises(FileNotFoundError, match='not found'):
        load_config(tmp_path / 'nope.py')


def test_find_checkpoint_order(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        find_checkpoint(tmp_path)
    for n in (2, 10, 9):
        (tmp_path / f'iter_{n}.pth').write_bytes(b'x')
    assert find_checkpoint(tmp_path, 'last') == tmp_path / 'iter_10.pth'  # numeric, not lexical order
    assert find_checkpoint(tmp_path, 'best') == tmp_path / 'iter_10.pth'  # no best_*: falls back to last
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_9.pth'))
    assert find_checkpoint(tmp_path, 'last') == tmp_path / 'iter_9.pth'  # the marker wins
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'gone.pth'))
    assert find_checkpoint(tmp_path, 'last') == tmp_path / 'iter_10.pth'  # stale marker ignored
    (tmp_path / 'best_cls_mAP_iter_2.pth').write_bytes(b'x')
    assert find_checkpoint(tmp_path, 'best') == tmp_path / 'best_cls_mAP_iter_2.pth'
    assert find_checkpoint(tmp_path, 'last') == tmp_path / 'iter_10.pth'


def test_missing_split_fails_early_naming_the_list_file(synthetic_root, tmp_path):
    options = dict(tiny_options(synthetic_root), **{'val_dataloader.dataset.split': 'no_such_split'})
    cfg = load_config(CONFIG, options)
    with pytest.raises(FileNotFoundError) as err:
        _check_splits(cfg)
    assert 'no_such_split.txt' in str(err.value) and 'val_dataloader' in str(err.value)
    with pytest.raises(FileNotFoundError, match='no_such_split.txt'):
        train_classifier(CONFIG, tmp_path / 'run', options)
    assert not (tmp_path / 'run').exists() or not list((tmp_path / 'run').glob('*.pth'))
    # a data root without JPEGImages/ is named too
    with pytest.raises(FileNotFoundError, match='JPEGImages'):
        _check_splits(load_config(CONFIG, {'data_root': str(tmp_path / 'empty')}))
    _check_splits(load_config(CONFIG, tiny_options(synthetic_root)))  # the real splits pass


# ---------------------------------------------------------------------------------------------------------------
# training (one short run shared by the tests below)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def trained(synthetic_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('cls_run')
    ckpt = train_classifier(CONFIG, work_dir, tiny_options(synthetic_root, max_iters=4))
    return SimpleNamespace(work_dir=work_dir, ckpt=Path(ckpt), root=synthetic_root)


def test_train_writes_metrics_and_checkpoints(trained):
    history = read_cls_metrics(trained.work_dir)
    assert [h['iter'] for h in history] == [2, 4]  # val_interval 2, max_iters 4
    for h in history:
        assert 0.0 <= h['cls/mAP'] <= 100.0
        assert 0.0 <= h['cls/f1_micro'] <= 100.0
        assert h['cls/num_images'] == 12  # the val split of the fixture
    assert trained.ckpt.is_file() and trained.ckpt.name.startswith('best_cls_mAP_iter_')
    assert trained.ckpt == find_checkpoint(trained.work_dir, 'best')
    assert find_checkpoint(trained.work_dir, 'last').name == 'iter_4.pth'
    state = torch.load(trained.ckpt, map_location='cpu', weights_only=False)
    assert all(k.startswith('backbone.') for k in state['state_dict'])
    assert state['meta']['iter'] in (2, 4)


def test_load_classifier_reproduces_trained_logits(trained):
    state = torch.load(trained.ckpt, map_location='cpu', weights_only=False)['state_dict']
    reference = MultiLabelClassifier(backbone=dict(TINY), num_classes=20)
    reference.load_state_dict(state, strict=True)
    reference.eval()
    images = val_images(trained.root)
    # the config dumped into work_dir carries the cfg_options of the run (64 px test backbone)
    dumped = trained.work_dir / CONFIG.name
    assert dumped.is_file()
    model = load_classifier(dumped, trained.ckpt)
    assert not model.training
    with torch.no_grad():
        expected = reference(images, mode='tensor')
        torch.testing.assert_close(model(images), expected)
        # a freshly initialised backbone gives other logits: the weights really came from the checkpoint
        torch.manual_seed(123)
        fresh = create_model('deit_test_patch8_64', num_classes=20).eval()
        assert not torch.allclose(fresh(images), expected, atol=1e-4)
        # another input size: pos_embed resampled, still a 20-way head on a 12x12 grid
        big = load_classifier(dumped, trained.ckpt, img_size=96)
        assert tuple(big.grid_size) == (12, 12)
        out = big(torch.nn.functional.interpolate(images, size=(96, 96), mode='bilinear', align_corners=False))
    assert out.shape == (len(images), 20) and torch.isfinite(out).all()


def test_load_classifier_wrong_backbone_lists_keys(trained):
    cfg = load_config(CONFIG, {'model.backbone.name': 'vim_test_patch8_64'})
    with pytest.raises(CheckpointError) as err:
        load_classifier(cfg, trained.ckpt)
    msg = str(err.value)
    assert 'missing (' in msg and 'unexpected (' in msg
    vim_keys = set(create_model('vim_test_patch8_64', num_classes=20).state_dict())
    deit_keys = set(create_model('deit_test_patch8_64', num_classes=20).state_dict())
    assert any(k in msg for k in vim_keys - deit_keys)  # a ViM key the DeiT checkpoint lacks
    assert any(k in msg for k in deit_keys - vim_keys)  # a DeiT key the ViM model does not have
    # a head of the wrong width is named as such
    with pytest.raises(CheckpointError, match='20-class head'):
        load_classifier(load_config(CONFIG, {'model.backbone.name': 'deit_test_patch8_64',
                                             'model.num_classes': 5}), trained.ckpt)


def test_resume_continues_to_more_iterations(trained, tmp_path):
    work_dir = tmp_path / 'resumed'
    shutil.copytree(trained.work_dir, work_dir)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_4.pth'))
    ckpt = train_classifier(CONFIG, work_dir, tiny_options(trained.root, max_iters=6), resume=True)
    history = read_cls_metrics(work_dir)
    # continued from iteration 4 (a restart from 0 would re-validate at 2 and 4)
    assert [h['iter'] for h in history] == [2, 4, 6]
    assert all(0.0 <= h['cls/mAP'] <= 100.0 for h in history)
    assert find_checkpoint(work_dir, 'last').name == 'iter_6.pth'
    last = torch.load(work_dir / 'iter_6.pth', map_location='cpu', weights_only=False)
    assert last['meta']['iter'] == 6
    assert Path(ckpt).is_file()
    # the original run is untouched
    assert [h['iter'] for h in read_cls_metrics(trained.work_dir)] == [2, 4]
