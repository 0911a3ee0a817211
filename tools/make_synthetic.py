"""Same as ``vim-wsss make-synthetic``: a thin wrapper over the console entry point (same options, errors and exit codes)."""
import sys

from vim_wsss.cli import main

if __name__ == '__main__':
    sys.exit(main(['make-synthetic', *sys.argv[1:]]))
