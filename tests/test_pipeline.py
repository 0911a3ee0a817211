"""End-to-end pipeline on the tiny synthetic fixture: report written from stage files, caching, invalidation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip('mmseg')

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def _tiny_configs(tmp: Path, family: str, model: str) -> dict:
    """cls / seg / seg-gt configs inheriting the demo's, shrunk to a few iterations of a CI-sized model at 64 px."""
    cls = tmp / f'cls_{family}.py'
    cls.write_text(f"""_base_ = '{CONFIGS}/cls/{family}-mini_synthetic-64.py'
model = dict(backbone=dict(name='{model}'))
crop_size = 64
train_dataloader = dict(batch_size=4, dataset=dict(transform=dict(crop_size=64)))
val_dataloader = dict(batch_size=8, dataset=dict(transform=dict(size=64)))
train_cfg = dict(max_iters=4, val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1),
                   dict(type='PolyLR', power=0.9, by_epoch=False, begin=1, end=4)]
default_hooks = dict(checkpoint=dict(interval=2))
""")
    seg = {}
    for suffix in ('', '-gt'):
        path = tmp / f'seg_{family}{suffix}.py'
        path.write_text(f"""_base_ = '{CONFIGS}/seg/segformer_{family}-mini_1xb8-320_synthetic-64{suffix}.py'
model = dict(data_preprocessor=dict(size=(64, 64)),
             backbone=dict(model_name='{model}', img_size=(64, 64), out_indices=(0, 1, 1, 1)),
             decode_head=dict(in_channels=[32, 32, 32, 32], channels=32))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1),
                   dict(type='PolyLR', power=1.0, by_epoch=False, begin=1, end=2)]
default_hooks = dict(checkpoint=dict(interval=2))
""")
        seg['seg_gt_config' if suffix else 'seg_config'] = str(path)
    return dict(cls_config=str(cls), **seg)


def test_pipeline_report_cache_and_invalidation(synthetic_root, tmp_path, capsys):
    from vim_wsss.pipeline.runner import run_pipeline

    backbones = {
        'vim': dict(method='transformer_attr', **_tiny_configs(tmp_path, 'vim', 'vim_test_patch8_64')),
        'deit': dict(method='transformer_attr', **_tiny_configs(tmp_path, 'deit', 'deit_test_patch8_64')),
    }
    options = {'data': dict(kind='voc', root=str(synthetic_root)), 'backbones': backbones,
               'pseudo.workers': 0, 'seeds.thresholds': [0.2, 0.4]}
    config = str(CONFIGS / 'pipeline' / 'synthetic_vim-mini_vs_deit-mini.py')
    report = run_pipeline(config, tmp_path / 'run', options)
    assert report.is_file() and (tmp_path / 'run' / 'per_class_iou_seg.png').is_file()
    results = json.loads((tmp_path / 'run' / 'report.json').read_text())
    stages = tmp_path / 'run' / 'stages'
    for name, row in results['backbones'].items():
        for key in ('cls_map', 'seed_miou', 'pseudo_miou', 'seg_miou', 'seg_gt_miou'):
            assert 0 <= row[key] <= 100, (name, key, row[key])
        assert row['bg_threshold'] in (0.2, 0.4)
    # the report's numbers are the ones the stages wrote
    rows = results['backbones']
    for name, row in rows.items():
        seg = [json.loads(p.read_text()) for p in stages.glob('seg-*/stage.json')]
        assert row['seg_miou'] in [s['outputs']['mIoU'] for s in seg]
    line = '| segmentation mIoU (val) | ' + ' | '.join(f"{rows[n]['seg_miou']:.2f}" for n in ('vim', 'deit')) + ' |'
    assert line in report.read_text()
    base = results['baselines']
    assert set(base) == {'train', 'val'} and set(base['val']) == {'background', 'whole_image', 'centre_blob'}
    assert 0 < base['val']['background'] < base['val']['centre_blob'] < 100
    blob = base['train']['centre_blob'], base['val']['centre_blob']
    assert f'| centre_blob | {blob[0]:.2f} | {blob[1]:.2f} |' in report.read_text()
    markers = {p: p.stat().st_mtime for p in stages.glob('*/stage.json')}
    assert len(markers) == 2 + 2 * 6

    capsys.readouterr()
    run_pipeline(config, tmp_path / 'run', options)  # everything cached
    assert capsys.readouterr().err.count('cached') == len(markers)
    assert {p: p.stat().st_mtime for p in stages.glob('*/stage.json')} == markers

    options['seeds.thresholds'] = [0.3]  # only the sweep and what depends on it re-run
    run_pipeline(config, tmp_path / 'run', options)
    err = capsys.readouterr().err
    assert err.count('cached') == 2 + 2 * 3  # data, baselines and per backbone cls, maps, seg_gt
    assert json.loads((tmp_path / 'run' / 'report.json').read_text())['backbones']['vim']['bg_threshold'] == 0.3


def test_eta_is_not_swung_by_short_stages():
    import io

    from vim_wsss.pipeline.progress import StageProgress
    progress = StageProgress([('data', 10.0), ('cls', 100.0), ('seg', 100.0)], stream=io.StringIO())
    assert progress.eta() == pytest.approx(210.0)
    progress.spent_actual += 1.0    # what end() records for a 10-s stage that took 1 s
    progress.spent_expected += 10.0
    progress.done = 1
    assert 150.0 < progress.eta() < 200.0     # not 20 s, as a bare actual/expected ratio would say
    progress.end('cls', started=progress.begin('cls') - 300.0, cached=False)  # 3x slower than expected
    assert progress.eta() > 100.0 * 1.5
