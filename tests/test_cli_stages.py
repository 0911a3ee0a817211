"""make-seeds, make-pseudo and eval-masks as users run them: the installed `vim-wsss` console script, as a subprocess.

Normal runs, --help, bad values (one-line error, non-zero exit, no traceback), non-finite classifiers and maps, and
honest resume (parameter records, verified outputs, lock, leftovers of a kill, no orphan workers).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vim_wsss.data.voc import read_mask, read_split

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
TIMEOUT = 300


def fails_with(result, *fragments):
    """A user-input error: non-zero exit, a one-line message naming ``fragments``, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if 'error:' in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def succeeds(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def dead_pid():
    """A pid that no longer runs (a finished child)."""
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------------------------
# module fixtures: a tiny classifier (config + checkpoint), its maps through the CLI
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    """A tiny ViM classifier: config path, a finite checkpoint and one with a NaN head weight."""
    from vim_wsss.models import create_model

    folder = tmp_path_factory.mktemp('cls')
    config = folder / 'cls_vim.py'
    config.write_text(f"_base_ = '{CONFIGS}/cls/vim-mini_synthetic-64.py'\n"
                      "model = dict(backbone=dict(name='vim_test_patch8_64'))\n")
    torch.manual_seed(0)
    model = create_model('vim_test_patch8_64', num_classes=20).eval()
    good = folder / 'good.pth'
    torch.save(model.state_dict(), good)
    state = model.state_dict()
    state['head.weight'][0, 0] = float('nan')
    bad = folder / 'nan.pth'
    torch.save(state, bad)
    return dict(config=config, good=good, nan=bad)


@pytest.fixture(scope='module')
def seeds(run_cli, classifier, synthetic_root, tmp_path_factory):
    """make-seeds over train (15 images) through the CLI: (out folder, CompletedProcess)."""
    out = tmp_path_factory.mktemp('seeds') / 'maps'
    result = run_cli('make-seeds', classifier['config'], classifier['good'], '--data-root', synthetic_root,
                     '--split', 'train', '--out', out, '--device', 'cpu', timeout=TIMEOUT)
    return out, result


def seeds_args(classifier, root, out, *extra):
    return ('make-seeds', classifier['config'], classifier['good'], '--data-root', root, '--split', 'train',
            '--out', out, '--device', 'cpu') + tuple(extra)


def pseudo_args(seed_dir, root, out, *extra, threshold='0.4'):
    return ('make-pseudo', seed_dir, '--data-root', root, '--split', 'train', '--out', out,
            '--bg-threshold', threshold) + tuple(extra)


def copy_seeds(seeds, tmp_path):
    out = tmp_path / 'maps'
    shutil.copytree(seeds[0], out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# make-seeds
# ---------------------------------------------------------------------------------------------------------------
def test_make_seeds_help(run_cli):
    out = succeeds(run_cli('make-seeds', '--help', timeout=TIMEOUT))
    for flag in ('--scales', '--no-rw', '--batch-size', '--skip-bad', '--overwrite'):
        assert flag in out


def test_make_seeds_normal_run_and_resume(run_cli, seeds, classifier, synthetic_root):
    out, result = seeds
    assert '15 written' in succeeds(result)
    names = read_split(synthetic_root, 'train')
    assert sorted(p.stem for p in out.glob('*.npz')) == sorted(names)
    meta = json.loads((out / 'maps_meta.json').read_text())
    assert meta['method'] == 'ours' and meta['scales'] == [1.0] and len(meta['checkpoint_sha256']) == 64
    assert not (out / '.lock').exists()
    again = succeeds(run_cli(*seeds_args(classifier, synthetic_root, out), timeout=TIMEOUT))
    assert '0 written' in again and '15 already done' in again


def test_make_seeds_multiscale(run_cli, classifier, synthetic_root, tmp_path):
    out = tmp_path / 'ms'
    stdout = succeeds(run_cli(*seeds_args(classifier, synthetic_root, out, '--scales', '1.0', '1.5', '--no-rw'),
                              timeout=TIMEOUT))
    assert '15 written' in stdout
    assert json.loads((out / 'maps_meta.json').read_text())['scales'] == [1.0, 1.5]
    with np.load(next(out.glob('*.npz'))) as data:
        assert data['maps'].shape[1:] == (8, 8) and np.isfinite(data['maps']).all()


@pytest.mark.parametrize('extra, fragments', [
    (('--batch-size', '0'), ('--batch-size 0', '>= 1')),
    (('--method', 'nope'), ("'nope'", 'transformer_attr')),
    (('--scales', '1.5'), ('--scales [1.5]', 'include 1.0')),
], ids=['batch0', 'method', 'no-unit-scale'])
def test_make_seeds_bad_values(run_cli, classifier, synthetic_root, tmp_path, extra, fragments):
    fails_with(run_cli(*seeds_args(classifier, synthetic_root, tmp_path / 'm', *extra), timeout=TIMEOUT), *fragments)
    assert not list(tmp_path.glob('m/*.npz'))


def test_make_seeds_non_finite_classifier_names_the_image(run_cli, classifier, synthetic_root, tmp_path):
    args = list(seeds_args(classifier, synthetic_root, tmp_path / 'm'))
    args[2] = classifier['nan']
    first = read_split(synthetic_root, 'train')[0]
    line = fails_with(run_cli(*args, timeout=TIMEOUT), 'non-finite logits', first, 'head.weight')
    assert 'checkpoint' in line
    assert not list((tmp_path / 'm').glob('*.npz'))  # no all-zero maps written


def test_make_seeds_other_parameters_refused_or_overwritten(run_cli, seeds, classifier, synthetic_root, tmp_path):
    out = copy_seeds(seeds, tmp_path)
    fails_with(run_cli(*seeds_args(classifier, synthetic_root, out, '--flip'), timeout=TIMEOUT),
               'other parameters', 'flip', '--overwrite')
    assert json.loads((out / 'maps_meta.json').read_text())['flip'] is False
    stdout = succeeds(run_cli(*seeds_args(classifier, synthetic_root, out, '--flip', '--overwrite'),
                              timeout=TIMEOUT))
    assert '15 written' in stdout and json.loads((out / 'maps_meta.json').read_text())['flip'] is True


def test_make_seeds_redoes_damaged_files_cleans_leftovers_and_takes_stale_lock(run_cli, seeds, classifier,
                                                                               synthetic_root, tmp_path):
    out = copy_seeds(seeds, tmp_path)
    names = sorted(p.stem for p in out.glob('*.npz'))
    (out / f'{names[0]}.npz').write_bytes(b'')                                        # 0 bytes
    (out / f'{names[1]}.npz').write_bytes((out / f'{names[1]}.npz').read_bytes()[:60])  # truncated
    (out / f'.{names[2]}.999999.tmp.npz').write_bytes(b'half')                          # left by a SIGKILL
    (out / '.lock').write_text(f'{dead_pid()}\n')                                      # its stale lock
    stdout = succeeds(run_cli(*seeds_args(classifier, synthetic_root, out), timeout=TIMEOUT))
    assert '2 written (2 of them redone' in stdout and '13 already done' in stdout
    assert not [p.name for p in out.iterdir() if 'tmp' in p.name or p.name == '.lock']
    for name in names[:2]:
        with np.load(out / f'{name}.npz') as data:
            assert data['maps'].shape[1:] == (8, 8)


def test_make_seeds_refuses_a_second_writer(run_cli, seeds, classifier, synthetic_root, tmp_path):
    out = copy_seeds(seeds, tmp_path)
    (out / '.lock').write_text(f'{os.getpid()}\n')  # a live writer
    fails_with(run_cli(*seeds_args(classifier, synthetic_root, out), timeout=TIMEOUT), f'pid {os.getpid()}',
               '.lock')
    assert (out / '.lock').read_text().strip() == str(os.getpid())


@pytest.fixture(scope='module')
def bad_root(synthetic_root, tmp_path_factory):
    """A copy of the synthetic dataset where one train image is corrupt."""
    root = tmp_path_factory.mktemp('bad') / 'VOC2012'
    shutil.copytree(synthetic_root, root)
    victim = read_split(root, 'train')[3]
    (root / 'JPEGImages' / f'{victim}.jpg').write_bytes(b'not a jpeg')
    return root, victim


def test_skip_bad_images(run_cli, classifier, bad_root, tmp_path):
    root, victim = bad_root
    assert 'skip_bad=True' not in fails_with(run_cli(*seeds_args(classifier, root, tmp_path / 'm'), timeout=TIMEOUT),
                                             victim)
    stdout = succeeds(run_cli(*seeds_args(classifier, root, tmp_path / 'm', '--skip-bad'), timeout=TIMEOUT))
    assert '14 written' in stdout and '1 unreadable' in stdout
    stdout = succeeds(run_cli(*pseudo_args(tmp_path / 'm', root, tmp_path / 'p', '--refine', '--skip-bad'),
                              timeout=TIMEOUT))
    assert '14 written' in stdout and '1 unreadable images skipped' in stdout and victim in stdout
    assert len(list((tmp_path / 'p').glob('*.png'))) == 14 and not (tmp_path / 'p' / f'{victim}.png').exists()


# ---------------------------------------------------------------------------------------------------------------
# make-pseudo
# ---------------------------------------------------------------------------------------------------------------
def test_make_pseudo_help(run_cli):
    out = succeeds(run_cli('make-pseudo', '--help', timeout=TIMEOUT))
    for flag in ('--bg-threshold', '--high', '--low', '--refine', '--workers', '--skip-bad', '--overwrite'):
        assert flag in out


def test_make_pseudo_normal_run(run_cli, seeds, synthetic_root, tmp_path):
    out = tmp_path / 'p'
    stdout = succeeds(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine', 'rw', 'par'),
                              timeout=TIMEOUT))
    names = read_split(synthetic_root, 'train')
    assert '15 written' in stdout
    assert sorted(p.stem for p in out.glob('*.png')) == sorted(names)
    assert read_mask(out / f'{names[0]}.png').shape == (64, 64)
    meta = json.loads((out / 'pseudo_meta.json').read_text())
    assert meta['bg_threshold'] == 0.4 and meta['refine'] == ['rw', 'par']
    assert not (out / '.lock').exists()


@pytest.mark.parametrize('extra, threshold, fragments', [
    ((), '1.5', ('--bg-threshold 1.5', '[0, 1]')),
    ((), '-0.5', ('--bg-threshold -0.5', '[0, 1]')),
    ((), 'nan', ('--bg-threshold nan', '[0, 1]')),
    (('--high', '0.3', '--low', '0.6'), '0.4', ('--low 0.6', '--high 0.3')),
    (('--high', '0.7', '--low', '0.3'), '0.9', ('--bg-threshold 0.9', 'band')),
    (('--workers', '-2'), '0.4', ('--workers -2', '>= 0')),
    (('--refine', 'dcrf'), '0.4', ("'dcrf'", 'rw', 'crf')),
], ids=['bg-1.5', 'bg-neg', 'bg-nan', 'low>high', 'bg-outside-band', 'workers', 'refine'])
def test_make_pseudo_bad_values(run_cli, seeds, synthetic_root, tmp_path, extra, threshold, fragments):
    out = tmp_path / 'p'
    fails_with(run_cli(*pseudo_args(seeds[0], synthetic_root, out, *extra, threshold=threshold), timeout=TIMEOUT),
               *fragments)
    assert not list(out.glob('*.png')) and not (out / 'pseudo_meta.json').exists()


def test_make_pseudo_rw_on_a_no_rw_cache_names_the_real_flag(run_cli, seeds, synthetic_root, tmp_path):
    seed_dir = copy_seeds(seeds, tmp_path)  # made as by make-seeds --no-rw: no 'rw' maps
    for path in seed_dir.glob('*.npz'):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k != 'rw'}
        np.savez_compressed(path, **arrays)
    line = fails_with(run_cli(*pseudo_args(seed_dir, synthetic_root, tmp_path / 'p', '--refine', 'rw'),
                              timeout=TIMEOUT), '--no-rw')
    assert 'make-seeds --rw' not in line


def test_make_pseudo_other_parameters_refused_or_overwritten(run_cli, seeds, synthetic_root, tmp_path):
    out = tmp_path / 'p'
    succeeds(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine'), timeout=TIMEOUT))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob('*.png')}
    fails_with(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine', threshold='0.5'), timeout=TIMEOUT),
               'other parameters', 'bg_threshold: 0.4 -> 0.5', '--overwrite')
    assert {p.name: p.stat().st_mtime_ns for p in out.glob('*.png')} == stamps  # nothing mixed in
    assert json.loads((out / 'pseudo_meta.json').read_text())['bg_threshold'] == 0.4
    stdout = succeeds(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine', '--overwrite',
                                           threshold='0.5'), timeout=TIMEOUT))
    assert '15 written' in stdout and json.loads((out / 'pseudo_meta.json').read_text())['bg_threshold'] == 0.5


def test_make_pseudo_redoes_damaged_masks_cleans_leftovers_and_takes_stale_lock(run_cli, seeds, synthetic_root,
                                                                                tmp_path):
    out = tmp_path / 'p'
    succeeds(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine'), timeout=TIMEOUT))
    names = sorted(p.stem for p in out.glob('*.png'))
    (out / f'{names[0]}.png').write_bytes(b'')
    (out / f'{names[1]}.png').write_bytes((out / f'{names[1]}.png').read_bytes()[:40])
    (out / f'.tmp-{names[2]}-abc123.png').write_bytes(b'\x89PNG half')
    (out / '.lock').write_text(f'{dead_pid()}\n')
    stdout = succeeds(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine'), timeout=TIMEOUT))
    assert '2 written (2 of them redone' in stdout and '13 already done' in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([f'{n}.png' for n in names] + ['pseudo_meta.json'])
    for name in names[:2]:
        assert read_mask(out / f'{name}.png').shape == (64, 64)


def test_make_pseudo_refuses_a_second_writer(run_cli, seeds, synthetic_root, tmp_path):
    out = tmp_path / 'p'
    out.mkdir()
    (out / '.lock').write_text(f'{os.getpid()}\n')
    fails_with(run_cli(*pseudo_args(seeds[0], synthetic_root, out, '--refine'), timeout=TIMEOUT),
               f'pid {os.getpid()}', 'make-pseudo')
    assert not list(out.glob('*.png'))


def test_make_pseudo_refuses_non_finite_maps(run_cli, seeds, synthetic_root, tmp_path):
    seed_dir = copy_seeds(seeds, tmp_path)
    victim = read_split(synthetic_root, 'train')[2]
    with np.load(seed_dir / f'{victim}.npz') as data:
        arrays = {k: data[k] for k in data.files}
    arrays['maps'][0, 1, 1] = np.nan
    np.savez_compressed(seed_dir / f'{victim}.npz', **arrays)
    fails_with(run_cli(*pseudo_args(seed_dir, synthetic_root, tmp_path / 'p', '--refine'), timeout=TIMEOUT),
               victim, 'NaN')
    assert not (tmp_path / 'p' / f'{victim}.png').exists()


# -- workers do not outlive a killed parent ---------------------------------------------------------------------
def _children(pid):
    found = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid):
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state != 'Z'


@pytest.fixture(scope='module')
def slow_root(tmp_path_factory):
    """48 images of 256 px with a fake seed cache: PAR + CRF keep a pool busy when its parent is killed."""
    from vim_wsss.wsss.seeds import META_FILE, save_map_file

    root = tmp_path_factory.mktemp('slow') / 'VOC2012'
    (root / 'JPEGImages').mkdir(parents=True)
    (root / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    seed_dir = root.parent / 'maps'
    rng = np.random.default_rng(0)
    names = [f'img_{i:03d}' for i in range(48)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / 'JPEGImages' / f'{name}.jpg')
        maps = rng.random((2, 8, 8)).astype(np.float32)
        save_map_file(seed_dir / f'{name}.npz', np.array([3, 7]), maps, (256, 256), rw=maps)
    (root / 'ImageSets' / 'Segmentation' / 'train.txt').write_text('\n'.join(names) + '\n')
    (seed_dir / META_FILE).write_text(json.dumps({'method': 'fake', 'rw': True, 'grid': [8, 8]}))
    return root, seed_dir


@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='needs /proc to find the workers')
def test_make_pseudo_workers_die_with_a_killed_parent(slow_root, tmp_path):
    """SIGKILL the parent while the pool is busy: no mask appears afterwards and every worker is gone."""
    root, seed_dir = slow_root
    out = tmp_path / 'p'
    args = [str(a) for a in pseudo_args(seed_dir, root, out, '--refine', 'par', 'crf', '--workers', '2')]
    script = Path(sys.executable).with_name('vim-wsss')
    command = [str(script)] if script.is_file() else [shutil.which('vim-wsss')]
    parent = subprocess.Popen(command + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and parent.poll() is None and not list(out.glob('*.png')):
            time.sleep(0.02)
        workers = _children(parent.pid)
        assert parent.poll() is None and workers, 'the run ended before it could be killed'
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        time.sleep(0.05)
        masks_at_kill = sorted(p.name for p in out.glob('*.png'))
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        time.sleep(3)  # an orphan would finish the image (and chunk) it holds meanwhile
        assert not [p for p in workers if _alive(p)], 'workers outlived their killed parent'
        assert sorted(p.name for p in out.glob('*.png')) == masks_at_kill, 'orphan workers kept writing masks'
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------------
# eval-masks
# ---------------------------------------------------------------------------------------------------------------
def test_eval_masks_help(run_cli):
    out = succeeds(run_cli('eval-masks', '--help', timeout=TIMEOUT))
    assert '--sweep' in out and '--tune-split' in out


def test_eval_masks_scores_masks_and_sweeps(run_cli, seeds, classifier, synthetic_root, tmp_path):
    pred = tmp_path / 'p'
    succeeds(run_cli(*pseudo_args(seeds[0], synthetic_root, pred, '--refine'), timeout=TIMEOUT))
    table = succeeds(run_cli('eval-masks', pred, '--data-root', synthetic_root, '--split', 'train', timeout=TIMEOUT))
    assert 'mIoU' in table and 'background' in table
    seed_dir = copy_seeds(seeds, tmp_path)  # + the tune images (train_aug minus train): make-seeds resumes
    succeeds(run_cli(*seeds_args(classifier, synthetic_root, seed_dir, '--split', 'train_aug'), timeout=TIMEOUT))
    sweep = succeeds(run_cli('eval-masks', seed_dir, '--data-root', synthetic_root, '--sweep', '0.2', '0.4',
                             '--out', tmp_path / 'curves', timeout=TIMEOUT))
    assert 'background threshold' in sweep and (tmp_path / 'curves' / 'seeds_sweep.png').is_file()


@pytest.mark.parametrize('extra, fragments', [
    (('--sweep', '1.5'), ('1.5', '[0, 1]')),
    (('--sweep', '--tune-split', 'train'), ('--tune-split train', '--split train')),
], ids=['threshold', 'tune-split'])
def test_eval_masks_bad_sweep(run_cli, seeds, synthetic_root, tmp_path, extra, fragments):
    fails_with(run_cli('eval-masks', seeds[0], '--data-root', synthetic_root, '--out', tmp_path, *extra,
                       timeout=TIMEOUT), *fragments)
