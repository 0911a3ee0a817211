"""Subcommands of ``vim-wsss``: each module has ``add_arguments(parser)`` and ``main(args) -> int``."""
