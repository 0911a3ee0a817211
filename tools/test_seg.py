"""Same as ``vim-wsss test-seg``: a thin wrapper over the console entry point (same options, errors and exit codes)."""
import sys

from vim_wsss.cli import main

if __name__ == '__main__':
    sys.exit(main(['test-seg', *sys.argv[1:]]))
