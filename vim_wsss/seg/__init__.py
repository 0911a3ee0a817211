"""mmseg plugin: ``custom_imports=dict(imports=['vim_wsss.seg'], allow_failed_imports=False)`` in a config.

Registers :class:`TokenBackbone` / :class:`VimBackbone` / :class:`DeitBackbone` and :class:`PerClassIoUMetric`
in mmseg's registries. Importing it first makes mmseg importable with mmcv-lite (see :mod:`vim_wsss.compat`).
"""
from vim_wsss.compat import ensure_mmseg

ensure_mmseg()

from .backbones import DeitBackbone, TokenBackbone, VimBackbone  # noqa: E402
from .metric import PerClassIoUMetric  # noqa: E402
from . import datasets, transforms  # noqa: E402,F401  (register the checked VOC dataset and loaders)

__all__ = ['TokenBackbone', 'VimBackbone', 'DeitBackbone', 'PerClassIoUMetric']
