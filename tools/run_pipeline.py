"""Same as ``vim-wsss pipeline``: a thin wrapper over vim_wsss.commands.pipeline."""
import argparse

from vim_wsss.commands.pipeline import add_arguments, main

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
