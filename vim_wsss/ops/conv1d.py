"""Causal depthwise conv1d + SiLU (the ViM mixer's conv) behind one dispatch point.

For channels-last ``x`` ``(B, L, E)``, depthwise weights ``w`` ``(E, K)`` (tap K-1 multiplies the current token) and
bias ``(E,)``::

    conv_t = bias + sum_k x_{t - (K-1) + k} * w_k        (tokens outside 0..L-1 are zeros)
    u_t    = SiLU(conv_t)

``reverse=True`` is the conv of the backward scan direction: the causal conv of the flipped sequence, flipped back,
i.e. anti-causal in the original order (``conv_t = bias + sum_k x_{t + k} * w_{K-1-k}``). Both ``conv`` (which the
explanation code reads) and ``u`` are returned, in x's dtype; everything is computed in fp32.

* ``'ref'`` :func:`causal_conv1d_silu_ref`, pure PyTorch (the mixer's original formula: K shifted multiply-adds
  on a padded copy, then ``F.silu``), any device, autograd.
* ``'numba'`` :func:`vim_wsss.ops.conv_numba.causal_conv1d_silu_numba`, one compiled CPU pass forward and one
  backward (gradients of x, weight and bias; see that module for compile time and threads).

``impl='auto'`` (the default) picks 'numba' for CPU tensors when numba imports, else 'ref' (also for CUDA tensors).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .selective_scan import _numba_hint, numba_available

__all__ = ['CONV_IMPLS', 'causal_conv1d_silu', 'causal_conv1d_silu_ref', 'resolve_conv_impl']

CONV_IMPLS = ('auto', 'ref', 'numba')

_numba_fn: Optional[Callable] = None


def _load_numba_conv() -> Optional[Callable]:
    """The compiled kernel's entry point, or None when numba does not import (the scan's check)."""
    global _numba_fn
    if _numba_fn is None and numba_available():
        from .conv_numba import causal_conv1d_silu_numba
        _numba_fn = causal_conv1d_silu_numba
    return _numba_fn


def resolve_conv_impl(x: torch.Tensor, impl: str = 'auto') -> str:
    """'ref' or 'numba' for input x: 'auto' is 'numba' for CPU tensors when numba imports, else 'ref'."""
    if impl not in CONV_IMPLS:
        raise ValueError(f'causal_conv1d_silu: unknown implementation {impl!r}; choose one of {CONV_IMPLS}.')
    if impl == 'auto':
        return 'numba' if x.device.type == 'cpu' and _load_numba_conv() is not None else 'ref'
    if impl == 'numba':
        if _load_numba_conv() is None:
            raise RuntimeError(f"causal_conv1d_silu impl 'numba': {_numba_hint()}")
        if x.device.type != 'cpu':
            raise RuntimeError("causal_conv1d_silu impl 'numba' runs on CPU tensors; use 'auto' or 'ref'.")
    return impl


def causal_conv1d_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                           reverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch causal depthwise conv + SiLU.

    Args:
        x: ``(B, L, E)``.
        weight: ``(E, K)``, tap K-1 multiplies the current token (of the scan order).
        bias: ``(E,)`` or None.
        reverse: anti-causal in the original order (the backward scan's conv).

    Returns:
        (conv, u), both ``(B, L, E)`` in x's dtype, u = SiLU(conv).
    """
    K = weight.shape[1]
    xf = x.float()
    taps = weight.float().t()  # (K, E)
    if reverse:
        taps = taps.flip(0)
    x_pad = F.pad(xf, (0, 0, 0, K - 1) if reverse else (0, 0, K - 1, 0))
    conv = sum(x_pad[:, k:k + x.shape[1]] * taps[k] for k in range(K))
    if bias is not None:
        conv = bias.float() + conv
    return conv.to(x.dtype), F.silu(conv).to(x.dtype)


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       reverse: bool = False, impl: str = 'auto') -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv + SiLU through the chosen implementation; arguments and results as
    :func:`causal_conv1d_silu_ref`, ``impl`` one of ``CONV_IMPLS``."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f'causal_conv1d_silu: x must be (B, L, E) and weight (E, K), got {tuple(x.shape)} and '
                         f'{tuple(weight.shape)}')
    if resolve_conv_impl(x, impl) == 'numba':
        return _load_numba_conv()(x, weight, bias, reverse)
    return causal_conv1d_silu_ref(x, weight, bias, reverse)
