"""Fine-tuning contracts, tested as users run them (the installed ``vim-wsss`` as a subprocess, mmengine's Runner).

* ``train-cls`` from an official-format file: the first training iteration uses exactly the file's weights
  (lr 0 for one iteration, then every backbone tensor of the saved checkpoint equals the file's).
* ``train-seg`` from the stage-1 classifier checkpoint: the segmentation backbone starts from it.
* ``test-seg`` refuses a checkpoint that does not fit; ``explain`` reads ``train-cls``'s own checkpoints.
* No checkpoint runs code: a payload checkpoint through every subcommand that reads one is refused with a message
  naming the refused global and the opt-in, and the payload does not run; ``--trust-checkpoint`` opts in.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from official_files import (official_deit_state_dict, official_vim_state_dict, save_official_deit,
                            save_official_vim, save_payload)

pytest.importorskip('mmseg')

CLS_CONFIG = 'configs/cls/{}-mini_synthetic-64.py'
SEG_CONFIG = 'configs/seg/segformer_{}-mini_1xb8-320_synthetic-64-gt.py'
ONE_ITER_LR0 = ['optim_wrapper.optimizer.lr=0', 'train_cfg.max_iters=1', 'train_cfg.val_interval=1',
                'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2', 'val_dataloader.batch_size=12']
FAMILIES = ('vim', 'deit')


def official_file(family: str, folder: Path) -> Path:
    """Official-format file for the mini backbone of ``family`` (1000-class ImageNet head, distinctive values)."""
    if family == 'vim':
        state = official_vim_state_dict(64, depth=6, num_patches=64, patch=8, d_state=8, seed=11)
        return save_official_vim(folder / 'vim_official.pth', state)
    state = official_deit_state_dict(64, depth=4, heads=2, num_patches=64, patch=8, seed=12)
    return save_official_deit(folder / 'deit_official.pth', state)


def saved_state(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']  # our own test output


def assert_same_tensors(actual: dict, expected: dict, what: str) -> None:
    assert set(actual) == set(expected), f'{what}: keys differ: {sorted(set(actual) ^ set(expected))[:6]}'
    changed = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not changed, f'{what}: {len(changed)} of {len(expected)} tensors differ from the file, e.g. {changed[:4]}'


@pytest.fixture(scope='module')
def finetuned(tmp_path_factory, synthetic_root, run_cli):
    """Per family: the official file, the stage-1 checkpoint trained one lr-0 iteration from it, and stage 2's."""
    runs = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f'finetune_{family}')
        official = official_file(family, folder)
        result = run_cli('train-cls', CLS_CONFIG.format(family), '--data-root', synthetic_root, '--work-dir',
                         folder / 'cls', '--cfg-options', f'model.backbone.pretrained={official}', *ONE_ITER_LR0)
        assert result.returncode == 0, result.stderr[-3000:]
        cls_ckpt = folder / 'cls' / 'iter_1.pth'
        result = run_cli('train-seg', SEG_CONFIG.format(family), '--data-root', synthetic_root, '--work-dir',
                         folder / 'seg', '--cfg-options', f'model.backbone.pretrained={cls_ckpt}', *ONE_ITER_LR0[:5])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[family] = dict(official=official, cls=cls_ckpt, seg=folder / 'seg' / 'iter_1.pth', folder=folder)
    return runs


@pytest.mark.parametrize('family', FAMILIES)
def test_classifier_starts_from_the_official_file(finetuned, family):
    run = finetuned[family]
    official = torch.load(run['official'], map_location='cpu', weights_only=False)['model']
    expected = {k: v for k, v in official.items() if not k.startswith('head.')}  # 1000-class head is replaced
    state = saved_state(run['cls'])
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    assert backbone['head.weight'].shape[0] == 20
    assert_same_tensors({k: v for k, v in backbone.items() if not k.startswith('head.')}, expected, 'train-cls')


@pytest.mark.parametrize('family', FAMILIES)
def test_segmentation_starts_from_the_classifier(finetuned, family):
    run = finetuned[family]
    cls = {k[len('backbone.'):]: v for k, v in saved_state(run['cls']).items()
           if k.startswith('backbone.') and not k.startswith('backbone.head.')}
    seg = {k[len('backbone.model.'):]: v for k, v in saved_state(run['seg']).items()
           if k.startswith('backbone.model.')}
    assert_same_tensors(seg, cls, 'train-seg')


def test_test_seg_refuses_a_checkpoint_that_does_not_fit(finetuned, synthetic_root, run_cli, tmp_path):
    result = run_cli('test-seg', SEG_CONFIG.format('vim'), finetuned['deit']['seg'], '--data-root', synthetic_root,
                     '--work-dir', tmp_path / 'wd')
    assert result.returncode == 1, result.stderr[-2000:]
    assert 'does not fit' in result.stderr and 'missing' in result.stderr and 'Traceback' not in result.stderr
    ok = run_cli('test-seg', SEG_CONFIG.format('vim'), finetuned['vim']['seg'], '--data-root', synthetic_root,
                 '--work-dir', tmp_path / 'wd_ok')
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert 'mIoU' in ok.stdout


def _image(folder: Path) -> Path:
    path = folder / 'img.png'
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    return path


def test_explain_reads_train_cls_checkpoints_without_opt_in(finetuned, run_cli, tmp_path):
    result = run_cli('explain', '--model', 'vim_mini_patch8_64', '--checkpoint', finetuned['vim']['cls'],
                     '--out', tmp_path / 'out', _image(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / 'out' / 'grid_ours.png').is_file()


def test_train_cls_resumes_its_own_checkpoint_without_opt_in(finetuned, synthetic_root, run_cli):
    run = finetuned['deit']
    result = run_cli('train-cls', CLS_CONFIG.format('deit'), '--data-root', synthetic_root, '--work-dir',
                     run['folder'] / 'cls', '--resume', '--cfg-options', *ONE_ITER_LR0[2:], 'train_cfg.max_iters=2')
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run['folder'] / 'cls' / 'iter_2.pth').is_file()


# ---------------------------------------------------------------------------------------------------------------
# hostile checkpoints
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def payload(finetuned, tmp_path):
    """A train-cls checkpoint of ViM-mini (real weights) carrying a command that touches ``marker`` if unpickled."""
    marker = tmp_path / 'PAYLOAD_RAN'
    state = saved_state(finetuned['vim']['cls'])
    return save_payload(tmp_path / 'hostile.pth', marker, state), marker


def _assert_refused(result, marker: Path) -> None:
    assert result.returncode != 0
    assert not marker.exists(), 'the payload ran'
    err = result.stderr
    assert 'hostile.pth' in err and re.search(r'holds (subprocess|commands)\.call', err), err[-2000:]  # py2 name
    assert '--trust-checkpoint' in err and 'VIM_WSSS_TRUST_CHECKPOINT=1' in err and 'Traceback' not in err


def test_payload_refused_by_make_seeds(payload, synthetic_root, run_cli, tmp_path):
    path, marker = payload
    _assert_refused(run_cli('make-seeds', CLS_CONFIG.format('vim'), path, '--data-root', synthetic_root,
                            '--out', tmp_path / 'maps'), marker)


def test_payload_refused_by_train_cls_pretrained_and_resume(payload, synthetic_root, run_cli, tmp_path):
    path, marker = payload
    _assert_refused(run_cli('train-cls', CLS_CONFIG.format('vim'), '--data-root', synthetic_root, '--work-dir',
                            tmp_path / 'a', '--cfg-options', f'model.backbone.pretrained={path}', *ONE_ITER_LR0),
                    marker)
    work = tmp_path / 'b'
    work.mkdir()
    (work / 'last_checkpoint').write_text(str(path))
    _assert_refused(run_cli('train-cls', CLS_CONFIG.format('vim'), '--data-root', synthetic_root, '--work-dir', work,
                            '--resume', '--cfg-options', *ONE_ITER_LR0), marker)


def test_payload_refused_by_train_seg_and_test_seg(payload, synthetic_root, run_cli, tmp_path):
    path, marker = payload
    _assert_refused(run_cli('train-seg', SEG_CONFIG.format('vim'), '--data-root', synthetic_root, '--work-dir',
                            tmp_path / 'a', '--cfg-options', f'model.backbone.pretrained={path}', *ONE_ITER_LR0[:5]),
                    marker)
    _assert_refused(run_cli('test-seg', SEG_CONFIG.format('vim'), path, '--data-root', synthetic_root, '--work-dir',
                            tmp_path / 'b'), marker)


def test_payload_refused_by_explain_and_opt_in_loads_it(payload, run_cli, tmp_path):
    path, marker = payload
    args = ['explain', '--model', 'vim_mini_patch8_64', '--checkpoint', path, '--out', tmp_path / 'out',
            _image(tmp_path)]
    _assert_refused(run_cli(*args), marker)
    trusted = run_cli(*args, '--trust-checkpoint')
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert marker.exists()  # the opt-in really unpickles (and so runs) what the file holds


def test_os_system_payload_is_named_not_called_truncated(finetuned, tmp_path):
    from vim_wsss.models import CheckpointError, read_checkpoint

    marker = tmp_path / 'RAN'
    path = save_payload(tmp_path / 'system.pth', marker, saved_state(finetuned['vim']['cls']), via='os.system')
    with pytest.raises(CheckpointError, match=r'posix\.system.*--trust-checkpoint') as info:
        read_checkpoint(path)
    assert 'truncated' not in str(info.value) and not marker.exists()
