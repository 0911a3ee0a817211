"""Same as ``vim-wsss test-seg``: a thin wrapper over vim_wsss.commands.test_seg."""
import argparse

from vim_wsss.commands.test_seg import add_arguments, main

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
