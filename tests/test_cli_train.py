"""Training commands as users run them: honest re-runs, atomic checkpoints, and one-line input errors."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

CLS_CONFIG = 'configs/cls/deit-mini_synthetic-64.py'
TINY = ['model.backbone.name=deit_test_patch8_64', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=4', 'val_dataloader.batch_size=12']


def _train(run_cli, root, work_dir, *extra, **kw):
    return run_cli('train-cls', CLS_CONFIG, '--data-root', root, '--work-dir', work_dir, *extra, '--cfg-options',
                   *TINY, **kw)


def _one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout[-1000:]
    err = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert err and err[-1].startswith('vim-wsss ') and ': error: ' in err[-1], result.stderr[-2000:]
    for needle in needles:
        assert needle in err[-1], err[-1]


def test_rerun_without_resume_is_refused_then_overwrite_starts_over(synthetic_root, run_cli, tmp_path):
    work = tmp_path / 'cls'
    first = _train(run_cli, synthetic_root, work)
    assert first.returncode == 0, first.stderr[-2000:]
    history = json.loads((work / 'cls_metrics.json').read_text())
    assert [h['iter'] for h in history] == [2]
    again = _train(run_cli, synthetic_root, work)
    _one_line_error(again, str(work), '--resume', '--overwrite')
    assert json.loads((work / 'cls_metrics.json').read_text()) == history  # untouched
    fresh = _train(run_cli, synthetic_root, work, '--overwrite')
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert [h['iter'] for h in json.loads((work / 'cls_metrics.json').read_text())] == [2]  # one run, not two


def test_full_disk_leaves_no_truncated_checkpoint(synthetic_root, run_cli, tmp_path):
    work = tmp_path / 'cls'
    result = _train(run_cli, synthetic_root, work, max_file_bytes=200_000)  # the checkpoint is ~1 MB
    _one_line_error(result, 'File too large', 'free space')
    leftovers = sorted(p.name for p in work.rglob('*') if p.suffix == '.pth' or '.tmp' in p.name)
    assert leftovers == [], leftovers  # nothing half-written for make-seeds to pick up


def test_clsmetrics_hook_keeps_each_iteration_once(tmp_path):
    from vim_wsss.models.classifier import ClsMetricsHook

    (tmp_path / 'cls_metrics.json').write_text(json.dumps([{'iter': 250, 'cls/mAP': 1.0},
                                                           {'iter': 500, 'cls/mAP': 2.0}]))
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=500, rank=0)  # resumed from 250, validated 500 again
    ClsMetricsHook().after_val_epoch(runner, {'cls/mAP': 3.0})
    history = json.loads((tmp_path / 'cls_metrics.json').read_text())
    assert [(h['iter'], h['cls/mAP']) for h in history] == [(250, 1.0), (500, 3.0)]


@pytest.mark.parametrize('command', [['train-cls'], ['train-seg'], ['pipeline'], ['test-seg', '{0}', 'x.pth']])
def test_missing_config_is_one_line(command, run_cli, tmp_path):
    missing = tmp_path / 'nope.py'
    args = [a.format(missing) for a in command[1:]] or [missing]
    _one_line_error(run_cli(command[0], *args), 'nope.py not found', 'configs/')


def test_output_path_through_a_file_is_one_line(synthetic_root, run_cli, tmp_path):
    (tmp_path / 'file').write_text('not a folder')
    _one_line_error(_train(run_cli, synthetic_root, tmp_path / 'file' / 'cls'), 'file')


def test_debug_shows_the_traceback(run_cli, tmp_path):
    result = run_cli('train-cls', tmp_path / 'nope.py', '--debug')
    assert result.returncode != 0 and 'Traceback' in result.stderr and 'nope.py' in result.stderr
