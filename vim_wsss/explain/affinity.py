"""Patch-to-patch affinity from implicit attention (ViM) or attention (DeiT), for affinity refinement of seeds.

ViM: per layer the full bidirectional implicit attention ``H = (H_f + J H_b J) / 2`` (gate, conv and SiLU folded in,
:func:`~vim_wsss.explain.implicit_attention.mamba_attention`), aggregated over the E inner channels as
``mean_c max(H_c, 0)`` by default (the same aggregation as the paper's vision attribution; ``mode='abs'`` uses
``mean_c |H_c|``). Negative entries are dropped rather than folded in as magnitudes because a negative implicit
weight means that token j pushes the channel of token i the *other* way, which is not evidence that i and j belong
together. DeiT: the head-averaged attention probabilities. The class token row and column are removed and the result
is averaged over ``layers``. Everything runs under ``torch.no_grad``; ViM channels are processed in chunks so the
``(B, E, L, L)`` tensor is never materialised.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .attribution import model_family
from .implicit_attention import attention_channel_mean

__all__ = ['patch_affinity', 'default_affinity_layers']


def default_affinity_layers(depth: int) -> List[int]:
    """The last third of the blocks (at least one): e.g. 16..23 of 24, 8..11 of 12."""
    return list(range(depth - max(1, depth // 3), depth))


def _remove_cls(mat: torch.Tensor, cls: int) -> torch.Tensor:
    """``(B, L, L)`` -> ``(B, M, M)`` without row and column ``cls``."""
    keep = torch.ones(mat.shape[-1], dtype=torch.bool, device=mat.device)
    keep[cls] = False
    return mat[:, keep][:, :, keep]


def patch_affinity(model: nn.Module, images: torch.Tensor, layers: Optional[Sequence[int]] = None, *,
                   mode: str = 'relu', channel_chunk: Optional[int] = None, impl: str = 'auto') -> torch.Tensor:
    """Channel-/head-aggregated attention between patches, averaged over layers.

    Args:
        model: ViM or DeiT backbone/classifier with ``forward_explain`` (eval mode).
        images: ``(B, 3, H, W)``.
        layers: block indices (negative from the end); default the last third (:func:`default_affinity_layers`).
        mode: ViM channel aggregation, 'relu' (mean of max(H_c, 0), default) or 'abs' (mean of |H_c|).
        channel_chunk: ViM channels per chunk of the torch path (default from a ~256 MB budget).
        impl: ViM channel means: 'auto' (the compiled CPU kernel for CPU tensors when numba imports), 'torch' or
            'numba' (see :func:`~vim_wsss.explain.implicit_attention.attention_channel_mean`).

    Returns:
        ``(B, M, M)`` fp32, rows = query patches, columns = key patches, row-major patch order.
    """
    family = model_family(model)
    depth = len(model.layers) if family == 'vim' else len(model.blocks)
    chosen = default_affinity_layers(depth) if layers is None else [int(i) + depth if int(i) < 0 else int(i)
                                                                     for i in layers]
    if not chosen or any(not 0 <= i < depth for i in chosen):
        raise ValueError(f'layers {layers} out of range for a model with {depth} blocks.')
    if family == 'vim' and mode not in ('relu', 'abs'):
        raise ValueError(f"mode must be 'relu' or 'abs', got {mode!r}")
    cls = int(model.cls_index)
    total = None
    with torch.no_grad():
        out = model.forward_explain(images)
        for layer in chosen:
            if family == 'vim':
                mat = attention_channel_mean(None, None, mode=mode, internals=out['internals'][layer],
                                             channel_chunk=channel_chunk, impl=impl)
            else:
                mat = out['attn'][layer].float().mean(dim=1)
            mat = _remove_cls(mat, cls)
            total = mat if total is None else total.add_(mat)
    return total / len(chosen)
