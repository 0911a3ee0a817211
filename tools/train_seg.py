"""Same as ``vim-wsss train-seg``: a thin wrapper over the console entry point (same options, errors and exit codes)."""
import sys

from vim_wsss.cli import main

if __name__ == '__main__':
    sys.exit(main(['train-seg', *sys.argv[1:]]))
