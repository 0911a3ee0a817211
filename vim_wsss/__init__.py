"""vim_wsss: weakly supervised semantic segmentation from the implicit attention of Vision Mamba."""
__version__ = '0.1.0'

from . import models  # noqa: E402,F401  (registers the timm entrypoints)
