"""The vim-wsss console entry point."""
from __future__ import annotations

import subprocess
import sys

from vim_wsss.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_make_synthetic_subprocess(tmp_path):
    out = subprocess.run([sys.executable, '-m', 'vim_wsss.cli', 'make-synthetic', '--out', str(tmp_path / 'd'),
                          '--num-train', '4', '--num-val', '2', '--size', '32'], capture_output=True, text=True,
                         check=True).stdout
    assert str(tmp_path / 'd') in out
    assert len(list((tmp_path / 'd' / 'JPEGImages').glob('*.jpg'))) == 6
