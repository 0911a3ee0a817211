"""The vim-wsss console entry point."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vim_wsss import cli
from vim_wsss.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name, (module, help_text) in SUBCOMMANDS.items():
        assert name in out and module.startswith('vim_wsss.commands.') and help_text
    assert 'typical workflow' in out
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0


def test_expected_subcommands_are_declared():
    assert {'demo', 'make-synthetic', 'train-cls', 'make-seeds', 'make-pseudo', 'eval-masks', 'train-seg', 'test-seg',
            'pipeline', 'explain'} <= set(SUBCOMMANDS)


def test_missing_module_fails_with_a_message(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, 'ghost', ('vim_wsss.commands.ghost_not_written', 'not there'))
    assert main(['ghost']) == 2
    err = capsys.readouterr().err
    assert 'ghost' in err and 'not available' in err and 'Traceback' not in err


def test_user_error_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / 'keep.txt').write_text('x')
    assert main(['make-synthetic', '--out', str(tmp_path), '--num-train', '2', '--num-val', '1', '--size', '32']) == 1
    assert str(tmp_path) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['make-synthetic', '--out', str(tmp_path / 'x'), '--num-train', '0'])


def test_make_synthetic_console_script(tmp_path):
    script = Path(sys.executable).with_name('vim-wsss')  # the installed entry point, else the module
    command = [str(script)] if script.is_file() else [sys.executable, '-m', 'vim_wsss.cli']
    result = subprocess.run(command + ['make-synthetic', '--out', str(tmp_path / 'd'), '--num-train', '4',
                                       '--num-val', '2', '--size', '32'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / 'd') in result.stdout
    assert len(list((tmp_path / 'd' / 'JPEGImages').glob('*.jpg'))) == 6


@pytest.mark.parametrize('name', ['demo', 'pipeline', 'make-synthetic', 'train-cls', 'train-seg', 'test-seg', 'explain'])
def test_subcommand_help_through_the_console_script(name, run_cli):
    result = run_cli(name, '--help')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f'usage: vim-wsss {name}') and '--debug' in result.stdout
    reads_checkpoints = name in cli.READS_CHECKPOINTS
    assert ('--trust-checkpoint' in result.stdout) == reads_checkpoints


def test_exit_status_of_a_system_exit_on_a_rank(capsys):
    """What a torchrun rank exits with when a command raises SystemExit: Python's own rule."""
    from vim_wsss.cli import _exit_status

    assert [_exit_status(SystemExit(c)) for c in (None, 0, 3)] == [0, 0, 3]
    assert _exit_status(SystemExit('--method x is not available')) == 1
    assert capsys.readouterr().err == '--method x is not available\n'
