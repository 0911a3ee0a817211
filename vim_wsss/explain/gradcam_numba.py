"""Compiled CPU kernel (numba) for channel means of the clamped full implicit attention of a ViM layer.

For one layer of a bidirectional ViM mixer it computes, for K row weightings at once,

    cam[b, k, i, j] = 1/E sum_c ( g[b, k, c, i] * H[b, c, i, j] * x[b, c, j] )^+

with ``H_c = 1/2 (H_f,c + J H_b,c J)`` the full unified implicit attention (S6, conv, SiLU and gate folded in) of
:mod:`vim_wsss.explain.implicit_attention`. With ``x`` the in_proj x-part and ``g`` the gradient of each class logit
with respect to the mixer output before ``out_proj`` it is the fast path of ViM ``transformer_attr``
(:func:`vim_wsss.explain.attribution._gradient_weighted_attention`); with ``g = x = 1`` (and ``g = -1`` for the
magnitude) it is the fast path of the affinity's channel means
(:func:`vim_wsss.explain.implicit_attention.attention_channel_mean`). The torch paths (full matrices from the block
factorisation, chunked over channels) are the reference, and the tests compare them.

Method: the full matrices are never stored. One job per (image, group of channels) walks each channel's scan in
its own order with the column states ``s[n, j]`` of every earlier token (the conv folded in, so
``H[i, j] = r_i sum_n C_i[n] s[n, j]``, ``s`` decayed by ``exp(delta_i A[n])`` per step: the recurrence of the scan
itself, in fp32). Rows of the forward scan fill the lower triangle of a per-channel ``(L, L)`` buffer, rows of the
backward scan (mirrored to original order) the upper one; the buffer then updates the job's ``(K, L, L)`` partial sum
for every class, and the partial sums are added. Cost ``~2 E L^2 N`` multiply-adds per layer and image, memory
``O(K L^2)`` per thread instead of the ``(B, E, L, L)`` matrices. States below :data:`TINY` are flushed to 0
(denormal arithmetic is ~10x slower on x86).

Measured (``benchmarks/bench_relevance.py``, ViM-S at 224, one layer of one image on one thread): 0.11 s against
0.5-1.0 s for the torch path, which materialises the ``(E, L, L)`` matrices.

Compile time: about 10-15 s on first use on a busy 2-core machine, then cached on disk (``cache=True``; see
:mod:`vim_wsss.ops.scan_numba` for the cache location; numba's cache tracks this file only, so after editing the
``_exp`` it inlines from that module, clear ``__pycache__``). Threads: one job per (image, channel group), at least
one per thread, run on torch's OpenMP team (else numba's pool) with ``torch.get_num_threads()`` threads, as the scan
(:mod:`vim_wsss.ops.team`).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from vim_wsss.ops.scan_numba import _array, _exp
from vim_wsss.ops.team import array2, array3, array4, array5, claim, launch, table_of

from .implicit_attention import PARTS, _direction_terms

__all__ = ['weighted_relu_channel_mean', 'gradient_weighted_attention_numba', 'relu_channel_mean_numba', 'TINY']

#: States whose magnitude falls below this are set to 0 (fp32 denormals start at 1.2e-38).
TINY = np.float32(1e-30)
_JIT = dict(cache=True, fastmath=True, nogil=True)
#: Column ranges of the state updates are rounded to this grid (no scalar remainder loops).
LANES = 16


@njit(inline='always', **_JIT)
def _flush(v):
    return v if abs(v) > TINY else np.float32(0.0)


@njit(inline='always', **_JIT)
def _decay_rows(s, a, lo, hi, coef, row):
    """``s[n, lo:hi] *= a[n]`` (flushing tiny values) and ``row[lo:hi] = sum_n coef[n] s[n, lo:hi]``.

    Loops run over views from index 0 (with a variable start numba's negative-index wraparound blocks
    vectorisation); callers pass ``lo`` and ``hi`` on the :data:`LANES` grid so no scalar remainder runs.
    """
    out = row[lo:hi]
    for j in range(hi - lo):
        out[j] = 0.0
    for n in range(s.shape[0]):
        an = a[n]
        cn = coef[n]
        sn = s[n, lo:hi]
        for j in range(hi - lo):
            v = _flush(sn[j] * an)
            sn[j] = v
            out[j] += cn * v


@njit(inline='always', **_JIT)
def _write_row(dest, row, x):
    """``dest[:] = row * x`` over equal-length views."""
    for j in range(dest.shape[0]):
        dest[j] = row[j] * x[j]


@njit(inline='always', **_JIT)
def _step_factors(delta, rs, cs, A, Bt, Ct, b, c, t, a, coef, new):
    """Decay ``exp(delta_t A)``, row coefficients ``rs_t C_t`` and new column ``delta_t cs_t B_t`` of step t, (N,)."""
    d = delta[b, c, t]
    r = rs[b, c, t]
    v = d * cs[b, c, t]
    for n in range(a.shape[0]):
        a[n] = _exp(d * A[c, n])
        coef[n] = r * Ct[b, t, n]
        new[n] = v * Bt[b, t, n]


@njit(inline='always', **_JIT)
def _direction(delta, rs, cs, A, Bt, Ct, w, x, b, c, backward, s, a, coef, new, row, out):
    """One channel's scan in its own order; writes rows of ``out`` (L, L) in original order (backward: the upper
    triangle and adds the diagonal; forward: the lower triangle including the diagonal). ``s`` and ``row`` have
    ``Lp >= L`` columns (a multiple of LANES); columns not yet reached hold 0."""
    length = delta.shape[2]
    padded = s.shape[1]
    taps = w.shape[1]
    s[:, :] = 0.0
    for t in range(length):
        _step_factors(delta, rs, cs, A, Bt, Ct, b, c, t, a, coef, new)
        i = length - 1 - t if backward else t  # original row; states are kept by original column
        if backward:  # earlier own columns are original columns > i; round the start down to the grid
            _decay_rows(s, a, (i + 1) // LANES * LANES, padded, coef, row)
        else:  # original columns < i; round the end up (those columns are still 0)
            _decay_rows(s, a, 0, min(padded, -(-i // LANES) * LANES), coef, row)
        for m in range(min(taps, t + 1)):  # own column t feeds own columns t - m through tap K-1-m
            j = i + m if backward else i - m
            wm = w[c, taps - 1 - m]
            acc = np.float32(0.0)
            for n in range(s.shape[0]):
                v = s[n, j] + wm * new[n]
                s[n, j] = v
                acc += coef[n] * v
            row[j] = acc
        if backward:
            out[i, i] += row[i] * x[b, c, i]
            _write_row(out[i, i + 1:], row[i + 1:length], x[b, c, i + 1:])
        else:
            _write_row(out[i, :i + 1], row[:i + 1], x[b, c, :i + 1])


@njit(inline='always', **_JIT)
def _gradcam_one(delta_f, rs_f, cs_f, A_f, B_f, C_f, w_f, delta_b, rs_b, cs_b, A_b, B_b, C_b, w_b, x, g, parts, job):
    """Job (b, group) of :func:`_gradcam`: channels group, group + G, ... of image b into parts[b, group]."""
    _, ngroup, nk, length, _ = parts.shape
    b = job // ngroup
    grp = job % ngroup
    nstate = A_f.shape[1]
    padded = -(-length // LANES) * LANES
    s = np.empty((nstate, padded), np.float32)
    vecs = np.empty((3, nstate), np.float32)
    a, coef, new = vecs[0], vecs[1], vecs[2]
    row = np.empty(padded, np.float32)
    mat = np.empty((length, length), np.float32)
    acc = parts[b, grp]
    acc[:, :, :] = 0.0
    for c in range(grp, delta_f.shape[1], ngroup):
        _direction(delta_f, rs_f, cs_f, A_f, B_f, C_f, w_f, x, b, c, False, s, a, coef, new, row, mat)
        _direction(delta_b, rs_b, cs_b, A_b, B_b, C_b, w_b, x, b, c, True, s, a, coef, new, row, mat)
        for k in range(nk):
            for i in range(length):
                gk = g[b, k, c, i]
                dest, src = acc[k, i], mat[i]
                for j in range(length):
                    dest[j] += max(gk * src[j], np.float32(0.0))


@njit(parallel=True, **_JIT)
def _gradcam(delta_f, rs_f, cs_f, A_f, B_f, C_f, w_f, delta_b, rs_b, cs_b, A_b, B_b, C_b, w_b, x, g, parts):
    """parts (B, G, K, L, L) receives each job's sum over its channels; job (b, group) takes channels
    group, group + G, ..."""
    for job in prange(parts.shape[0] * parts.shape[1]):
        _gradcam_one(delta_f, rs_f, cs_f, A_f, B_f, C_f, w_f, delta_b, rs_b, cs_b, A_b, B_b, C_b, w_b, x, g, parts,
                     job)


def _gradcam_team(data):
    """Team function of :func:`_gradcam` (see :mod:`vim_wsss.ops.team`)."""
    tab = table_of(data)
    delta_f, i = array3(tab, 2)
    rs_f, i = array3(tab, i)
    cs_f, i = array3(tab, i)
    A_f, i = array2(tab, i)
    B_f, i = array3(tab, i)
    C_f, i = array3(tab, i)
    w_f, i = array2(tab, i)
    delta_b, i = array3(tab, i)
    rs_b, i = array3(tab, i)
    cs_b, i = array3(tab, i)
    A_b, i = array2(tab, i)
    B_b, i = array3(tab, i)
    C_b, i = array3(tab, i)
    w_b, i = array2(tab, i)
    x, i = array3(tab, i)
    g, i = array4(tab, i)
    parts, i = array5(tab, i)
    job = claim(tab)
    while job < tab[1]:
        _gradcam_one(delta_f, rs_f, cs_f, A_f, B_f, C_f, w_f, delta_b, rs_b, cs_b, A_b, B_b, C_b, w_b, x, g, parts,
                     job)
        job = claim(tab)


def _direction_arrays(ins: object, scale: float) -> tuple:
    """delta ``(B, E, L)``, row scale ``scale SiLU(z)``, column scale ``sigmoid(conv_out)`` (both ``(B, E, L)``), A
    ``(E, N)``, B and C as ``(B, L, N)``, conv taps ``(E, K)``: one direction, in its own order (the factors of the
    full unified operator, as the torch path's :func:`~vim_wsss.explain.implicit_attention._direction_terms`)."""
    delta, col, row, weight = _direction_terms(ins, slice(None), PARTS, scale)
    return tuple(_array(t) for t in (delta, row, col, ins.A, ins.B.transpose(1, 2), ins.C.transpose(1, 2), weight))


def weighted_relu_channel_mean(internals: dict, row_weights: torch.Tensor, col_weights: torch.Tensor
                               ) -> torch.Tensor:
    """``1/E sum_c (row_weights[b, k, c, i] * H_c[i, j] * col_weights[b, c, j])^+`` of one bidirectional layer.

    Args:
        internals: the layer's ``{'f': ScanInputs, 'b': ScanInputs}`` (CPU tensors; 'b' in flipped order).
        row_weights: ``(B, K, E, L)``, e.g. the gradient of K class logits, or ones.
        col_weights: ``(B, E, L)``, e.g. the in_proj x-part, or ones.

    Returns:
        ``(B, K, L, L)`` fp32.
    """
    fwd, bwd = internals['f'], internals['b']
    bsz, classes, chans, length = row_weights.shape
    groups = max(1, min(chans, -(-torch.get_num_threads() // bsz)))  # at least one job per thread
    parts = np.empty((bsz, groups, classes, length, length), np.float32)
    launch(_gradcam, _gradcam_team, bsz * groups, *_direction_arrays(fwd, 0.5), *_direction_arrays(bwd, 0.5),
           _array(col_weights), _array(row_weights), parts)
    return torch.from_numpy(parts).sum(dim=1).div_(chans)


def gradient_weighted_attention_numba(internals: dict, grads: torch.Tensor) -> torch.Tensor:
    """``E_c[(d logit / d H_c * H_c)^+]`` of one bidirectional layer for K classes
    (``d logit / d H_c[i, j] = grads[.., i, c] x_c[j]``).

    Args:
        internals: the layer's ``{'f': ScanInputs, 'b': ScanInputs}`` (CPU tensors; 'b' in flipped order).
        grads: ``(B, K, L, E)`` gradient of each class logit with respect to the mixer output before ``out_proj``.

    Returns:
        ``(B, K, L, L)`` fp32.
    """
    return weighted_relu_channel_mean(internals, grads.transpose(-1, -2), internals['f'].x)


def relu_channel_mean_numba(internals: dict, mode: str) -> torch.Tensor:
    """``mean_c max(H_c, 0)`` ('relu') or ``mean_c |H_c|`` ('abs', = relu(H) + relu(-H)) of one bidirectional layer:
    ``(B, L, L)`` fp32."""
    x = internals['f'].x
    ones = torch.ones_like(x, dtype=torch.float32)
    signs = torch.tensor([1.0] if mode == 'relu' else [1.0, -1.0])
    rows = signs.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[1:])
    return weighted_relu_channel_mean(internals, rows, ones).sum(dim=1)
