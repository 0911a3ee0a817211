"""make-seeds and make-pseudo sharded over torchrun ranks (CPU, gloo, loopback only), as users launch them:
`torchrun --standalone --nproc-per-node N --no-python vim-wsss ...`.

Every output file (maps, records, masks) must be byte-identical to a single-process run for world sizes 1, 2 and 3
(11 images: uneven shards 6/5 and 4/4/3), a run killed at one world size resumes at another, and an error on the
ranks (a live writer's lock, NaN logits) stops every rank with its one-line message instead of a hang.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vim_wsss.dist import Group, group_from_env, shard, share_line

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
BIN = Path(sys.executable).parent
TIMEOUT = 300
NAMES = 11  # images in the 'eleven' split: 11 = 6 + 5 = 4 + 4 + 3


def tool(name):
    path = BIN / name
    if not path.is_file():
        pytest.fail(f'{name} is not installed next to {sys.executable}; run `pip install -e .` (make install)')
    return str(path)


def clean_env():
    """This environment without the torchrun variables and the checkpoint opt-in, one thread per process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('VIM_WSSS_TRUST_CHECKPOINT', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    env['OMP_NUM_THREADS'] = '1'
    return env


def run(*args, world=None):
    """``vim-wsss *args`` as one process (``world`` None) or under torchrun with ``world`` ranks."""
    env = clean_env()
    launch = [] if world is None else [tool('torchrun'), '--standalone', f'--nproc-per-node={world}', '--no-python']
    return subprocess.run(launch + [tool('vim-wsss')] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def files(folder):
    """{name: bytes} of every file in ``folder``, hidden records included."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def assert_same(folder, reference):
    got, want = files(folder), files(reference)
    assert sorted(got) == sorted(want)
    assert [n for n in want if got[n] != want[n]] == []


@pytest.fixture(scope='module')
def setup(synthetic_root, tmp_path_factory):
    """A copy of the synthetic set with an 11-image split, a tiny ViM classifier, single-process maps and masks."""
    from vim_wsss.data.voc import read_split
    from vim_wsss.models import create_model

    top = tmp_path_factory.mktemp('dist')
    root = top / 'VOC2012'
    shutil.copytree(synthetic_root, root)
    names = read_split(root, 'train_aug')[:NAMES]
    (root / 'ImageSets' / 'Segmentation' / 'eleven.txt').write_text('\n'.join(names) + '\n')
    config = top / 'cls_vim.py'
    config.write_text(f"_base_ = '{CONFIGS}/cls/vim-mini_synthetic-64.py'\n"
                      "model = dict(backbone=dict(name='vim_test_patch8_64'))\n")
    torch.manual_seed(0)
    checkpoint = top / 'vim.pth'
    torch.save(create_model('vim_test_patch8_64', num_classes=20).eval().state_dict(), checkpoint)
    ctx = dict(top=top, root=root, config=config, checkpoint=checkpoint, names=names)
    ok(run(*seeds_args(ctx, top / 'ref_maps')))
    ok(run(*pseudo_args(ctx, top / 'ref_maps', top / 'ref_masks')))
    return ctx


def seeds_args(ctx, out):
    return ('make-seeds', ctx['config'], ctx['checkpoint'], '--data-root', ctx['root'], '--split', 'eleven',
            '--out', out, '--device', 'cpu', '--batch-size', '2')


def pseudo_args(ctx, maps, out):
    return ('make-pseudo', maps, '--data-root', ctx['root'], '--split', 'eleven', '--out', out,
            '--bg-threshold', '0.4', '--refine', 'rw', 'par', 'crf')


@pytest.fixture(scope='module')
def world2(setup):
    """Maps and masks written by 2 ranks (6 + 5 images)."""
    maps, masks = setup['top'] / 'w2_maps', setup['top'] / 'w2_masks'
    seeds = ok(run(*seeds_args(setup, maps), world=2))
    pseudo = ok(run(*pseudo_args(setup, maps, masks), world=2))
    return dict(maps=maps, masks=masks, seeds=seeds, pseudo=pseudo)


# ---------------------------------------------------------------------------------------------------------------
# helpers (no processes)
# ---------------------------------------------------------------------------------------------------------------
def test_shards_are_disjoint_balanced_and_cover_the_sorted_list():
    names = [f'img{i:02d}' for i in (7, 3, 10, 0, 5, 1, 9, 2, 8, 4, 6)]
    for world in (1, 2, 3, 4):
        parts = [shard(names, Group(rank=r, world=world)) for r in range(world)]
        assert sorted(n for p in parts for n in p) == sorted(names)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(names, Group()) == names  # one process: the list as given, in its order
    assert [len(shard(names, Group(rank=r, world=3))) for r in range(3)] == [4, 4, 3]
    assert share_line(Group(rank=1, world=3), 4, 11) == 'rank 1/3: 4 of 11 images'
    assert share_line(Group(), 11, 11) == ''


def test_group_from_env(monkeypatch):
    from vim_wsss.data.voc import DataError

    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    assert group_from_env() == Group()
    monkeypatch.setenv('WORLD_SIZE', '3')
    monkeypatch.setenv('RANK', '2')
    monkeypatch.setenv('LOCAL_RANK', '1')
    group = group_from_env()
    assert (group.rank, group.world, group.local_rank, group.sharded, group.main) == (2, 3, 1, True, False)
    monkeypatch.setenv('RANK', '3')
    with pytest.raises(DataError, match='RANK'):
        group_from_env()
    monkeypatch.setenv('RANK', 'two')
    with pytest.raises(DataError, match='whole number'):
        group_from_env()


# ---------------------------------------------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------------------------------------------
def test_world_1_is_the_single_process_run(setup):
    out = setup['top'] / 'w1_maps'
    result = ok(run(*seeds_args(setup, out), world=1))
    assert f'{NAMES} written' in result.stdout and 'ranks' not in result.stdout
    assert_same(out, setup['top'] / 'ref_maps')


def test_world_2_uneven_shards_identical(setup, world2):
    assert_same(world2['maps'], setup['top'] / 'ref_maps')
    assert_same(world2['masks'], setup['top'] / 'ref_masks')
    for result in (world2['seeds'], world2['pseudo']):
        assert result.stdout.count('11 written') == 1  # rank 0 alone prints the summary of all ranks
        assert 'over 2 ranks (6/5 images)' in result.stdout
        for line in ('rank 0/2: 6 of 11 images', 'rank 1/2: 5 of 11 images'):
            assert line in result.stderr


def test_world_3_uneven_shards_identical(setup):
    maps, masks = setup['top'] / 'w3_maps', setup['top'] / 'w3_masks'
    seeds = ok(run(*seeds_args(setup, maps), world=3))
    pseudo = ok(run(*pseudo_args(setup, maps, masks), world=3))
    assert_same(maps, setup['top'] / 'ref_maps')
    assert_same(masks, setup['top'] / 'ref_masks')
    for result in (seeds, pseudo):
        assert 'over 3 ranks (4/4/3 images)' in result.stdout
        assert 'rank 2/3: 3 of 11 images' in result.stderr


def dead_pid():
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


def damage(folder, suffix):
    """What a run killed mid-way leaves: two outputs missing, one truncated, a temporary, a dead writer's lock."""
    outputs = sorted(Path(folder).glob(f'*{suffix}'))
    for path in outputs[:2]:
        path.unlink()
    outputs[5].write_bytes(outputs[5].read_bytes()[:40])
    (Path(folder) / f'.{outputs[6].stem}.999999.tmp{suffix}').write_bytes(b'partial')
    (Path(folder) / '.lock').write_text(f'{dead_pid()}\n')


def test_killed_run_resumes_at_another_world_size(setup, world2, tmp_path):
    maps, masks = tmp_path / 'maps', tmp_path / 'masks'
    shutil.copytree(world2['maps'], maps)
    shutil.copytree(world2['masks'], masks)
    damage(maps, '.npz')
    seeds = ok(run(*seeds_args(setup, maps), world=3))
    assert '3 written (1 of them redone: damaged), 8 already done' in seeds.stdout
    assert_same(maps, setup['top'] / 'ref_maps')
    damage(masks, '.png')
    pseudo = ok(run(*pseudo_args(setup, maps, masks), world=1))
    assert '3 written (1 of them redone: damaged), 8 already done' in pseudo.stdout
    assert_same(masks, setup['top'] / 'ref_masks')


def test_a_live_writer_refuses_every_rank(setup, world2, tmp_path):
    maps = tmp_path / 'maps'
    shutil.copytree(world2['maps'], maps)
    (maps / '.lock').write_text(f'{os.getpid()}\n')  # this test process: alive
    result = run(*seeds_args(setup, maps), world=2)
    assert result.returncode != 0
    errors = result.stderr.split('vim-wsss make-seeds: error: ')[1:]
    assert len(errors) == 2 and all(e.startswith(f'another make-seeds (pid {os.getpid()})') for e in errors), \
        result.stderr
    assert (maps / '.lock').read_text().strip() == str(os.getpid())


def test_an_error_on_the_ranks_stops_all_of_them(setup, tmp_path):
    state = torch.load(setup['checkpoint'])
    state['head.weight'][0, 0] = float('nan')
    broken = tmp_path / 'nan.pth'
    torch.save(state, broken)
    args = list(seeds_args(setup, tmp_path / 'maps'))
    args[2] = broken
    result = run(*args, world=2)  # every rank meets the NaN logits: none may wait for the others forever
    assert result.returncode != 0
    errors = result.stderr.split('vim-wsss make-seeds: error: ')[1:]  # one a rank, each naming its own images
    assert len(errors) == 2 and all(e.startswith('the classifier gives non-finite logits') for e in errors), \
        result.stderr
    assert not (tmp_path / 'maps' / '.lock').exists()


ENDING = """
import atexit, sys
from vim_wsss.dist import current_group, finish, gather_results


class Finalised:
    def __del__(self):  # runs in the interpreter's finalisation, which a rank's finish skips
        print('finalised', flush=True)


KEEP = Finalised()
group = current_group()
atexit.register(lambda: print(f'exit handlers ran on rank {group.rank}', flush=True))
shares = gather_results(lambda: 10 * group.rank, group)
print(f'rank {group.rank} shares {shares}', end='')  # not flushed: finish must flush it
sys.exit(finish(int(sys.argv[1])))
"""


def test_a_rank_ends_through_finish(tmp_path):
    """A joined rank runs the exit handlers, flushes, ends with its status and skips finalisation (where gloo's
    worker threads can abort the process); one process gets its status back."""
    from vim_wsss.dist import finish

    assert finish(5) == 5  # no group joined in this process
    script = tmp_path / 'ending.py'
    script.write_text(ENDING)
    env = clean_env()
    launch = [tool('torchrun'), '--standalone', '--nproc-per-node=2', str(script)]
    done = subprocess.run(launch + ['0'], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in (0, 1):
        assert f'exit handlers ran on rank {rank}' in done.stdout
        assert f'rank {rank} shares [0, 10]' in done.stdout
    assert 'finalised' not in done.stdout
    failed = subprocess.run(launch + ['3'], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert failed.returncode != 0 and 'exitcode  : 3' in failed.stderr, failed.stderr
