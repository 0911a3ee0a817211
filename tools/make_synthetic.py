"""Write the synthetic VOC-format dataset (same as ``vim-wsss make-synthetic``)."""
import argparse

from vim_wsss.commands.make_synthetic import add_arguments, main

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
