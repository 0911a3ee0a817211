"""Compatibility with the installed stack: mmcv-lite (no compiled ops) and torch >= 2.6 ``weights_only`` loading."""
from __future__ import annotations

from .checkpoint import mmengine_trusted_load, torch_load

__all__ = ['ensure_mmseg', 'torch_load', 'mmengine_trusted_load']


def ensure_mmseg():
    """Import mmseg so that it works with mmcv-lite and mmcv 2.2, and return the module.

    Installs the :mod:`vim_wsss.compat.mmcv_ops` stand-in when ``mmcv._ext`` is missing, and passes mmseg 1.2.2's
    ``mmcv < 2.2.0`` assertion for mmcv 2.2.x by presenting 2.1.0 during the import only (the ops mmseg uses are the
    same); the real version is restored right after.
    """
    import sys

    if 'mmseg' in sys.modules:
        return sys.modules['mmseg']
    import mmcv

    from .mmcv_ops import install

    install()
    real = mmcv.__version__
    if real.startswith('2.2'):
        mmcv.__version__ = '2.1.0'
    try:
        import mmseg
        import mmseg.models  # noqa: F401  (fails without the shim on mmcv-lite)
    finally:
        mmcv.__version__ = real
    return mmseg
