"""A pure-torch stand-in for ``mmcv.ops`` when only mmcv-lite is installed (no compiled ``mmcv._ext``).

mmseg 1.2.2 imports ``point_sample`` (and ``sigmoid_focal_loss``) from ``mmcv.ops`` at module level, so
``import mmseg.models`` fails with mmcv-lite. :func:`install` registers a small module providing ``point_sample``
in pure torch; every other op raises ``ModuleNotFoundError`` (mmseg guards its optional ops with
``except ModuleNotFoundError``). With full mmcv it does nothing.
"""
from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F

MESSAGE = ('mmcv.ops.{name} needs the compiled mmcv, but mmcv-lite (no mmcv._ext) is installed. Pick a head/loss '
           'that does not use it, or build mmcv 2.1.0 with MMCV_WITH_OPS=1 (its setup.py needs -std=c++20 for '
           'torch 2.14) and install it in place of mmcv-lite.')


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs) -> torch.Tensor:
    """Sample ``input`` ``(N, C, H, W)`` at normalised points ``(N, P, 2)`` or ``(N, Hp, Wp, 2)`` in [0, 1].

    Same semantics as ``mmcv.ops.point_sample``: returns ``(N, C, P)`` or ``(N, C, Hp, Wp)``.
    """
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    out = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return out.squeeze(3) if add_dim else out


def sigmoid_focal_loss(*args, **kwargs):
    """Not available without compiled mmcv: raises RuntimeError saying so (mmseg imports the name eagerly)."""
    raise RuntimeError(MESSAGE.format(name='sigmoid_focal_loss'))


def _missing(name: str):
    if name.startswith('__'):
        raise AttributeError(name)  # mmengine's registry probes __file__ etc. with hasattr
    raise ModuleNotFoundError(MESSAGE.format(name=name))


def has_compiled_mmcv() -> bool:
    """True when the real ``mmcv._ext`` extension imports."""
    try:
        import mmcv._ext  # noqa: F401
        return True
    except Exception:
        return False


def install() -> bool:
    """Register the stand-in as ``mmcv.ops`` if needed. Returns True when it was installed (now or before)."""
    current = sys.modules.get('mmcv.ops')
    if getattr(current, '__vim_wsss_shim__', False):
        return True
    if has_compiled_mmcv():
        return False
    for key in [k for k in sys.modules if k == 'mmcv.ops' or k.startswith('mmcv.ops.')]:
        del sys.modules[key]
    ops = types.ModuleType('mmcv.ops', 'vim_wsss pure-torch stand-in for mmcv.ops (mmcv-lite installed)')
    ops.__vim_wsss_shim__ = True
    ops.point_sample = point_sample
    ops.sigmoid_focal_loss = sigmoid_focal_loss
    ops.__getattr__ = _missing
    sys.modules['mmcv.ops'] = ops
    import mmcv

    mmcv.ops = ops
    return True
