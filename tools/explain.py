"""Relevance-map overlays for images: thin wrapper over ``vim_wsss.commands.explain`` (``vim-wsss explain``)."""
from vim_wsss.commands.explain import main

if __name__ == '__main__':
    raise SystemExit(main())
