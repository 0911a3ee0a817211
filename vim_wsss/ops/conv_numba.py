"""Compiled CPU causal depthwise conv1d + SiLU (numba), forward and backward, behind
:func:`vim_wsss.ops.causal_conv1d_silu` as 'numba'.

Same semantics as :func:`vim_wsss.ops.conv1d.causal_conv1d_silu_ref` (the taps are accumulated in the same order,
bias added last; SiLU uses the scan kernels' vectorisable polynomial exp, ~1e-7 relative error): fp32 throughout,
results and gradients in the input dtypes. One pass over x forward (conv and SiLU written together), one pass
backward (the SiLU derivative from the saved conv output, then the gradients of x, the taps and the bias), instead
of K shifted multiply-adds on a padded copy plus a SiLU, each reading and writing the whole ``(B, L, E)`` tensor.

Layout: ``(B, L, E)`` C-contiguous fp32 arrays (time-major, channels last; a strided view is copied once, the ViM
mixer passes contiguous halves of ``in_proj``'s output). One job per (batch, block of ``BLOCK`` channels), run in
parallel; channels innermost, so every tap is one vector multiply-add, and full blocks run code compiled for the
fixed width. The gradient of x is the same tap gather run in the other direction over the SiLU-scaled gradient.

Compile time: the two kernels compile on first use (about 8 s forward and 15 s backward on a busy 2-core machine)
and are cached on disk (``cache=True``, beside this file like the scan's). Threads are those of the scan: each call
runs on torch's OpenMP team, else on numba's pool (:mod:`vim_wsss.ops.team`). The kernels inline helpers of
``scan_numba`` (exp, sigmoid, the job split) and numba's cache is keyed on this file alone: after editing those
helpers, delete this module's cache files (``__pycache__/conv_numba.*``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from numba import njit, prange

from .scan_numba import _JIT, _array, _job_span, _n_jobs, _sigmoid
from .team import array1, array2, array3, claim, launch, table_of

BLOCK = 256  # channels per job


@njit(inline='always', **_JIT)
def _source(t, k, K, reverse):
    """Token read by tap slot k of output token t (slot order is the reference's accumulation order) and the
    weight column it multiplies."""
    if reverse:
        return t + k, K - 1 - k
    return t - (K - 1) + k, k


@njit(inline='always', **_JIT)
def _taps_row(src, wt, b, t, e0, w, reverse, acc):
    """acc[e] = sum over the valid taps k of src[b, s_k, e0 + e] * wt[tap_k, e0 + e] for output token t."""
    length = src.shape[1]
    K = wt.shape[0]
    for e in range(w):
        acc[e] = 0.0
    for k in range(K):
        s, tap = _source(t, k, K, reverse)
        if 0 <= s < length:
            xr, wr = src[b, s, e0:e0 + w], wt[tap, e0:e0 + w]
            for e in range(w):
                acc[e] += xr[e] * wr[e]


@njit(inline='always', **_JIT)
def _fwd_job(x, wt, bias, reverse, conv, u, b, e0, w):
    acc = np.empty(BLOCK, np.float32)
    bb = bias[e0:e0 + w]
    for t in range(x.shape[1]):
        _taps_row(x, wt, b, t, e0, w, reverse, acc)
        cr, ur = conv[b, t, e0:e0 + w], u[b, t, e0:e0 + w]
        for e in range(w):
            c = bb[e] + acc[e]
            cr[e] = c
            ur[e] = c * _sigmoid(c)


@njit(inline='always', **_JIT)
def _fwd_one(x, wt, bias, reverse, conv, u, job):
    b, e0, w = _job_span(job, x.shape[2], BLOCK)
    if w == BLOCK:
        _fwd_job(x, wt, bias, reverse, conv, u, b, e0, BLOCK)
    else:
        _fwd_job(x, wt, bias, reverse, conv, u, b, e0, w)


@njit(parallel=True, **_JIT)
def _conv_fwd(x, wt, bias, reverse, conv, u):
    """conv = bias + sum of the K taps, u = SiLU(conv); x, conv, u (B, L, E), wt (K, E), bias (E,)."""
    for job in prange(_n_jobs(x.shape[0], x.shape[2], BLOCK)):
        _fwd_one(x, wt, bias, reverse, conv, u, job)


def _conv_fwd_team(data):
    """Team function of :func:`_conv_fwd` (see :mod:`vim_wsss.ops.team`)."""
    tab = table_of(data)
    x, i = array3(tab, 2)
    wt, i = array2(tab, i)
    bias, i = array1(tab, i)
    reverse = tab[i] != 0
    conv, i = array3(tab, i + 1)
    u, i = array3(tab, i)
    job = claim(tab)
    while job < tab[1]:
        _fwd_one(x, wt, bias, reverse, conv, u, job)
        job = claim(tab)


@njit(inline='always', **_JIT)
def _bwd_job(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part, b, e0, w):
    length = x.shape[1]
    K = wt.shape[0]
    dw = np.zeros((K, BLOCK), np.float32)
    db = np.zeros(BLOCK, np.float32)
    for t in range(length):
        cr, gur, gr = conv[b, t, e0:e0 + w], gu[b, t, e0:e0 + w], g[b, t, e0:e0 + w]
        for e in range(w):
            c = cr[e]
            sig = _sigmoid(c)
            gr[e] = gur[e] * sig * (np.float32(1.0) + c * (np.float32(1.0) - sig))
        if has_gconv:
            gcr = gconv[b, t, e0:e0 + w]
            for e in range(w):
                gr[e] += gcr[e]
        for e in range(w):
            db[e] += gr[e]
        for k in range(K):
            s, tap = _source(t, k, K, reverse)
            if 0 <= s < length:
                xr = x[b, s, e0:e0 + w]
                for e in range(w):
                    dw[tap, e] += gr[e] * xr[e]
    # dx is the conv of g in the other direction with the same taps (no bias)
    acc = np.empty(BLOCK, np.float32)
    for s in range(length):
        _taps_row(g, wt, b, s, e0, w, not reverse, acc)
        dxr = dx[b, s, e0:e0 + w]
        for e in range(w):
            dxr[e] = acc[e]
    for k in range(K):
        row = dw_part[b, k, e0:e0 + w]
        for e in range(w):
            row[e] = dw[k, e]
    row = db_part[b, e0:e0 + w]
    for e in range(w):
        row[e] = db[e]


@njit(inline='always', **_JIT)
def _bwd_one(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part, job):
    b, e0, w = _job_span(job, x.shape[2], BLOCK)
    if w == BLOCK:
        _bwd_job(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part, b, e0, BLOCK)
    else:
        _bwd_job(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part, b, e0, w)


@njit(parallel=True, **_JIT)
def _conv_bwd(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part):
    """Gradients: g = gu * SiLU'(conv) (+ gconv when has_gconv; else gconv is a placeholder) (B, L, E) (scratch),
    dx (B, L, E), per-batch partial sums dw_part (B, K, E) and db_part (B, E)."""
    for job in prange(_n_jobs(x.shape[0], x.shape[2], BLOCK)):
        _bwd_one(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part, job)


def _conv_bwd_team(data):
    """Team function of :func:`_conv_bwd`."""
    tab = table_of(data)
    x, i = array3(tab, 2)
    wt, i = array2(tab, i)
    conv, i = array3(tab, i)
    gconv, i = array3(tab, i)
    has_gconv = tab[i] != 0
    gu, i = array3(tab, i + 1)
    reverse = tab[i] != 0
    g, i = array3(tab, i + 1)
    dx, i = array3(tab, i)
    dw_part, i = array3(tab, i)
    db_part, i = array2(tab, i)
    job = claim(tab)
    while job < tab[1]:
        _bwd_one(x, wt, conv, gconv, has_gconv, gu, reverse, g, dx, dw_part, db_part, job)
        job = claim(tab)


class _ConvSiluFn(torch.autograd.Function):
    """Fused causal depthwise conv + SiLU through the numba kernels, analytic backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        ctx.set_materialize_grads(False)  # conv's gradient is None when only u is used (training)
        xa = _array(x)
        wt = _array(weight.t())
        ba = _array(bias) if bias is not None else np.zeros(weight.shape[0], np.float32)
        conv, u = np.empty_like(xa), np.empty_like(xa)
        launch(_conv_fwd, _conv_fwd_team, _n_jobs(xa.shape[0], xa.shape[2], BLOCK), xa, wt, ba, bool(reverse), conv, u)
        conv_t = torch.from_numpy(conv)
        ctx.save_for_backward(x, weight, bias, conv_t)
        ctx.reverse = bool(reverse)
        return conv_t.to(x.dtype), torch.from_numpy(u).to(x.dtype)

    @staticmethod
    def backward(ctx, gconv, gu):
        x, weight, bias, conv = ctx.saved_tensors
        xa = _array(x)
        if gu is None:
            gu = torch.zeros_like(conv)
        batch, _, dim = xa.shape
        K = weight.shape[1]
        g, dx = np.empty_like(xa), np.empty_like(xa)
        dw_part = np.empty((batch, K, dim), np.float32)
        db_part = np.empty((batch, dim), np.float32)
        launch(_conv_bwd, _conv_bwd_team, _n_jobs(batch, dim, BLOCK), xa, _array(weight.t()), conv.numpy(),
               _array(conv if gconv is None else gconv), gconv is not None, _array(gu), ctx.reverse, g, dx, dw_part,
               db_part)
        dweight = torch.from_numpy(dw_part).sum(dim=0).t().to(weight.dtype)
        dbias = None if bias is None else torch.from_numpy(db_part).sum(dim=0).to(bias.dtype)
        return torch.from_numpy(dx).to(x.dtype), dweight, dbias, None


def causal_conv1d_silu_numba(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                             reverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compiled CPU causal depthwise conv + SiLU; arguments and results as ``causal_conv1d_silu_ref``.

    Args:
        x: ``(B, L, E)`` CPU tensor. weight: ``(E, K)``. bias: ``(E,)`` or None.
        reverse: anti-causal in the original order (the backward scan direction's conv).

    Returns:
        (conv, u) ``(B, L, E)`` in x's dtype.
    """
    if x.device.type != 'cpu':
        raise RuntimeError("causal_conv1d_silu impl 'numba' runs on CPU tensors; use 'auto' or 'ref'.")
    return _ConvSiluFn.apply(x, weight, bias, reverse)
