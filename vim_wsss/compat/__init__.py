"""Compatibility with the installed stack: mmcv-lite (no compiled ops) and torch >= 2.6 ``weights_only`` loading.

Import mmseg through :func:`ensure_mmseg` (never ``import mmseg`` first): it installs the ``mmcv.ops`` stand-in
when needed. Checkpoints go through :func:`vim_wsss.models.checkpoint.read_checkpoint`; mmengine's own loads (resume,
``load_from``) through :func:`patch_mmengine_io`, which routes them there.
"""
from __future__ import annotations

import sys
import warnings
from types import ModuleType

from .checkpoint import patch_mmengine_io

__all__ = ['ensure_mmseg', 'patch_mmengine_io']


def ensure_mmseg() -> ModuleType:
    """Import ``mmseg`` and ``mmseg.models`` so they work with mmcv-lite and mmcv 2.2, and return ``mmseg``.

    Installs the :mod:`vim_wsss.compat.mmcv_ops` stand-in when ``mmcv._ext`` is missing (no-op with compiled mmcv),
    and passes mmseg 1.2.2's ``mmcv < 2.2.0`` assertion for mmcv 2.2.x by presenting version 2.1.0 during the
    import only (the ops mmseg uses are the same); the real ``mmcv.__version__`` is restored right after.
    Idempotent and cheap after the first call.
    """
    from .mmcv_ops import install

    shimmed = install()
    if 'mmseg.models' in sys.modules:
        return sys.modules['mmseg']
    import mmcv

    real = mmcv.__version__
    if 'mmseg' not in sys.modules and real.startswith('2.2'):
        mmcv.__version__ = '2.1.0'
    try:
        with warnings.catch_warnings():
            if shimmed:  # mmcv-lite's own import-time notice; the stand-in's errors say the same when it matters
                warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
            import mmseg
            import mmseg.models  # noqa: F401  (fails without the stand-in on mmcv-lite)
    finally:
        mmcv.__version__ = real
    return mmseg
