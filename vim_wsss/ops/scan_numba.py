"""Compiled CPU selective scan (numba), forward and backward, behind :func:`vim_wsss.ops.selective_scan` as 'numba'.

Same semantics and arguments as :func:`vim_wsss.ops.selective_scan_ref` (D skip, SiLU(z) gate, delta bias and
softplus, ``return_last_state``) plus ``reverse``: scan from the last token to the first, as the flipped-sequence
scan of the backward direction, without flipping any tensor. Everything is computed in fp32 (fp64 / bf16 / fp16
inputs are converted, as the reference does); the output has u's dtype.

Kernel layout: one job per (batch, block of ``BLOCK`` channels), jobs run in parallel (see Threads); each job
walks the sequence with its ``(N, BLOCK)`` state in a thread-local buffer, channels innermost so every update is a
vector operation. The inputs are read in place from time-major, channels-last ``(B, L, E)`` arrays (free when the
caller's tensors are channels-last views, as the ViM mixer's u and dt are; a strided view such as the gate z is
copied once per call), softplus(delta + bias) and delta * u are computed per token, and full channel blocks run code
compiled for the fixed width ``BLOCK`` (the last, partial block the same code with a runtime width). ``exp`` is a
vectorisable polynomial because LLVM cannot vectorise libm's: the state decays exp(delta A) = 2^(delta A log2 e)
through :func:`_exp2` with A scaled once per job (the exponent is the cost of a state update; relative error 8e-8),
softplus and sigmoid through :func:`_exp` (Cody-Waite range reduction, degree-7 Taylor, 1e-7). The forward keeps the
state every ``CHUNK`` steps (only when a gradient is needed); the backward recomputes each chunk from it and runs
the adjoint recurrence in reverse, so training memory is about one ``(B, E, L)`` tensor per scan.

Compile time: the two kernels compile on first use, 45-70 s together on a busy 2-core machine (the forward on the
first call, the backward on the first backward; each is compiled for full and partial channel blocks, as a team
function or, without the team, as a prange loop), and are cached on disk (``cache=True``, in ``__pycache__`` beside
this file, or numba's user cache dir when that is read-only; ``NUMBA_CACHE_DIR`` moves it, e.g. to a CI cache);
later processes load them in about half a second. Editing this file invalidates the cache. There is one compiled
signature per kernel: every argument is converted to C-contiguous fp32 and absent optional inputs are passed as
placeholders.

Threads: each call runs on ``torch.get_num_threads()`` threads of torch's own OpenMP team (the per-job body is
compiled as a team function, :mod:`vim_wsss.ops.team`), so ``torch.set_num_threads`` (or
``OMP_NUM_THREADS``) governs both and nothing oversubscribes the cores; where that runtime is not found (or with
``VIM_WSSS_OMP_TEAM=0``), on ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)`` threads of numba's 'workqueue' pool
(selected unless ``NUMBA_THREADING_LAYER`` is set: numba's 'omp' layer runs a second OpenMP runtime beside torch's,
whose threads kept spinning after each kernel, ViM-S forward 9.3 s instead of 1.0 s on 2 cores). Workqueue threads
sleep between kernels and the layer does not allow concurrent launches, so those calls take turns through a lock.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .team import array1, array2, array3, array4, claim, launch, table_of

BLOCK = 64  # channels per job (4 AVX-512 / 8 AVX2 vectors)
CHUNK = 16  # steps between saved states; the backward recomputes one chunk at a time

# fastmath without 'arcp' (divisions stay exact) and numpy's error model (no zero-division check, whose branch kept
# the loops with a division, sigmoid and softplus, from vectorising; no divisor here can be zero)
_FASTMATH = {'nnan', 'ninf', 'nsz', 'contract', 'afn', 'reassoc'}
_JIT = dict(cache=True, fastmath=_FASTMATH, nogil=True, error_model='numpy')


# ----------------------------------------------------------------------------------------------------------------
# vectorisable elementwise functions (fp32)
# ----------------------------------------------------------------------------------------------------------------
@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret an int32 as a float32 (LLVM bitcast, vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _bits_from_f32(typingctx, value):
    """Reinterpret a float32 as an int32 (LLVM bitcast, vectorises)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


#: Degree-6 polynomial for 2^f on [-1/2, 1/2], fit for relative error (iteratively reweighted least squares on
#: Chebyshev nodes, near-minimax: 1.9e-9 in fp64, 9.6e-8 evaluated in fp32), constant term first.
_EXP2_POLY = (1.0, 0.693147206, 0.240226469, 0.0555032878, 0.00961848896, 0.00133999312, 0.000153458101)
LOG2E = 1.4426950408889634


@njit(inline='always', **_JIT)
def _exp2(t):
    """2^t for fp32 t, clamped to [-125, 125]: 2^k p(t - k), k = rint(t), relative error 8e-8. The state decays
    exp(delta A) are computed as _exp2(delta * (A log2 e)) with A scaled once per job: 13 vector operations after
    the product instead of _exp's 17 (the forward scan 1.4x faster). p(f) lies in [0.70, 1.42], so 2^k is applied
    by adding k to its exponent bits (no overflow for |k| <= 125)."""
    t = min(max(t, np.float32(-125.0)), np.float32(125.0))
    k = np.rint(t)
    f = t - k
    p = np.float32(_EXP2_POLY[6])
    p = p * f + np.float32(_EXP2_POLY[5])
    p = p * f + np.float32(_EXP2_POLY[4])
    p = p * f + np.float32(_EXP2_POLY[3])
    p = p * f + np.float32(_EXP2_POLY[2])
    p = p * f + np.float32(_EXP2_POLY[1])
    p = p * f + np.float32(_EXP2_POLY[0])
    return _f32_from_bits(_bits_from_f32(p) + (np.int32(k) << np.int32(23)))


@njit(inline='always', **_JIT)
def _exp(x):
    """exp(x) for fp32 x: 2^k * p(r), r = x - k ln2 in [-ln2/2, ln2/2]; inputs are clamped to [-87, 88]. Relative
    error 1e-7 for |x| <= 10, 3e-7 at the ends."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(LOG2E) + np.float32(0.5))
    r = (x - k * np.float32(0.693145751953125)) - k * np.float32(1.428606765330187e-06)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(inline='always', **_JIT)
def _log1p_unit(v):
    """log(1 + v) for v in [0, 1]: 2 atanh(s), s = v / (2 + v) <= 1/3, odd series to s^13."""
    s = v / (np.float32(2.0) + v)
    s2 = s * s
    p = np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + np.float32(1.0)
    return np.float32(2.0) * s * p


@njit(inline='always', **_JIT)
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), accurate for all x."""
    return max(x, np.float32(0.0)) + _log1p_unit(_exp(-abs(x)))


@njit(inline='always', **_JIT)
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + _exp(-x))


# ----------------------------------------------------------------------------------------------------------------
# kernels. Sequence inputs u, dt, z, B, C, dout and the outputs are C-contiguous fp32 (B, L, X) arrays (time-major,
# channels last), read and written in place: a job touches the rows ``x[b, t, e0:e0 + w]`` of its channel block.
# Row helpers take a width w (BLOCK for full blocks, a literal, so their loops compile to fixed-length vector code;
# the block at the end of E runs the same code with a runtime width). Per-job buffers are (.., BLOCK) wide. Loops
# over channels index from 0: per-channel vectors (D, bias) are sliced to the block once per job and sequence rows
# once per token (``x[b, t, e0:e0 + w]``), because an index with a variable start (``x[b, t, e0 + e]``) gets numba's
# negative-index wraparound select, which kept those loops from vectorising (4-5x slower). In the per-state loops
# only scalars are read from the big arrays (B[b, t, n]): a view there costs two atomic reference-count updates.
# ----------------------------------------------------------------------------------------------------------------
@njit(inline='always', **_JIT)
def _job_span(job, dim, block):
    """(batch, first channel, width) of parallel job ``job`` over batch x blocks of ``block`` channels."""
    nblk = (dim + block - 1) // block
    e0 = (job % nblk) * block
    return job // nblk, e0, min(block, dim - e0)


@njit(inline='always', **_JIT)
def _n_jobs(batch, dim, block):
    """Parallel jobs over batch x blocks of ``block`` channels (see :func:`_job_span`)."""
    return batch * ((dim + block - 1) // block)


@njit(inline='always', **_JIT)
def _block_A(A_t, e0, w, scale):
    """(N, BLOCK) zero-padded copy of A_t's channels e0..e0+w times scale."""
    Ab = np.zeros((A_t.shape[0], BLOCK), np.float32)
    for n in range(A_t.shape[0]):
        row = A_t[n, e0:e0 + w]
        for e in range(w):
            Ab[n, e] = row[e] * scale
    return Ab


@njit(inline='always', **_JIT)
def _token(i, length, reverse):
    """Token index of scan step i."""
    return length - 1 - i if reverse else i


@njit(inline='always', **_JIT)
def _delta_row(dt, u, b, t, bias, e0, w, softplus, dts, dtus, j):
    """Token t: dts[j] = softplus(dt + bias) (or dt + bias), dtus[j] = dts[j] * u, channels e0..e0+w; bias is the
    block's (BLOCK,) view."""
    dtr, ur = dt[b, t, e0:e0 + w], u[b, t, e0:e0 + w]
    if softplus:
        for e in range(w):
            d = _softplus(dtr[e] + bias[e])
            dts[j, e] = d
            dtus[j, e] = d * ur[e]
    else:
        for e in range(w):
            d = dtr[e] + bias[e]
            dts[j, e] = d
            dtus[j, e] = d * ur[e]


@njit(inline='always', **_JIT)
def _step(h, A2, dts, dtus, Bm, Cm, b, t, y, w):
    """One recurrence step on an (N, BLOCK) state h, in place, with dts, dtus (1, BLOCK) and A2 = A log2 e
    (N, BLOCK); y (1, BLOCK) receives C.h."""
    for e in range(w):
        y[0, e] = 0.0
    for n in range(h.shape[0]):
        bn = Bm[b, t, n]
        cn = Cm[b, t, n]
        for e in range(w):
            hv = _exp2(dts[0, e] * A2[n, e]) * h[n, e] + dtus[0, e] * bn
            h[n, e] = hv
            y[0, e] += cn * hv


@njit(inline='always', **_JIT)
def _step_keep(hs, A2, dts, dtus, Bm, Cm, b, t, decays, ys, j, w):
    """Recurrence step j of a chunk keeping its factors: hs[j + 1] = decays[j] * hs[j] + dtus[j] * B_t with
    decays[j] = exp(dts[j] A) = _exp2(dts[j] A2) ((CHUNK + 1 or CHUNK), N, BLOCK), as :func:`_step`; ys[j] receives
    C.h."""
    for e in range(w):
        ys[j, e] = 0.0
    for n in range(A2.shape[0]):
        bn = Bm[b, t, n]
        cn = Cm[b, t, n]
        for e in range(w):
            a = _exp2(dts[j, e] * A2[n, e])
            decays[j, n, e] = a
            hv = a * hs[j, n, e] + dtus[j, e] * bn
            hs[j + 1, n, e] = hv
            ys[j, e] += cn * hv


@njit(inline='always', **_JIT)
def _out_row(y, u, z, D, b, t, e0, w, has_z, out):
    """out[b, t] = (y + D u) * SiLU(z) (or y + D u) for channels e0..e0+w; y (1, BLOCK), D the block's view."""
    ur, orow = u[b, t, e0:e0 + w], out[b, t, e0:e0 + w]
    if has_z:
        zr = z[b, t, e0:e0 + w]
        for e in range(w):
            zv = zr[e]
            orow[e] = (y[0, e] + D[e] * ur[e]) * zv * _sigmoid(zv)
    else:
        for e in range(w):
            orow[e] = y[0, e] + D[e] * ur[e]


@njit(inline='always', **_JIT)
def _save_state(h, ckpt, b, k, e0, w):
    """ckpt[b, k, n, e0 + e] = h[n, e] for an (N, BLOCK) state."""
    for n in range(h.shape[0]):
        row = ckpt[b, k, n, e0:e0 + w]
        for e in range(w):
            row[e] = h[n, e]


@njit(inline='always', **_JIT)
def _fwd_job(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last, b, e0, w):
    """Forward scan of batch b, channels e0..e0+w."""
    length = out.shape[1]
    dstate = A_t.shape[0]
    A2 = _block_A(A_t, e0, w, np.float32(LOG2E))
    Db, biasb = D[e0:e0 + w], bias[e0:e0 + w]
    h = np.zeros((dstate, BLOCK), np.float32)
    dts, dtus, y = np.empty((1, BLOCK), np.float32), np.empty((1, BLOCK), np.float32), np.empty((1, BLOCK), np.float32)
    for i in range(length):
        t = _token(i, length, reverse)
        if i % CHUNK == 0 and i // CHUNK < ckpt.shape[1]:
            _save_state(h, ckpt, b, i // CHUNK, e0, w)
        _delta_row(dt, u, b, t, biasb, e0, w, softplus, dts, dtus, 0)
        _step(h, A2, dts, dtus, Bm, Cm, b, t, y, w)
        _out_row(y, u, z, Db, b, t, e0, w, has_z, out)
    for n in range(dstate):
        for e in range(w):
            last[b, e0 + e, n] = h[n, e]


@njit(inline='always', **_JIT)
def _fwd_one(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last, job):
    """Job ``job`` of the forward scan: batch x channel block, full blocks with the fixed-width code."""
    b, e0, w = _job_span(job, out.shape[2], BLOCK)
    if w == BLOCK:
        _fwd_job(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last, b, e0, BLOCK)
    else:
        _fwd_job(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last, b, e0, w)


@njit(parallel=True, **_JIT)
def _scan_fwd(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last):
    """Forward scan. Writes out (B, L, E), ckpt (B, n_chunks, N, E) (the state before every CHUNK-th step, in scan
    order; a (B, 0, N, E) ckpt keeps none, for a forward without backward) and last (B, E, N)."""
    for job in prange(_n_jobs(out.shape[0], out.shape[2], BLOCK)):
        _fwd_one(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last, job)


def _scan_fwd_team(data):
    """Team function of :func:`_scan_fwd` (see :mod:`vim_wsss.ops.team`): the same arguments, packed."""
    tab = table_of(data)
    u, i = array3(tab, 2)
    dt, i = array3(tab, i)
    z, i = array3(tab, i)
    Bm, i = array3(tab, i)
    Cm, i = array3(tab, i)
    A_t, i = array2(tab, i)
    D, i = array1(tab, i)
    bias, i = array1(tab, i)
    softplus, has_z, reverse = tab[i] != 0, tab[i + 1] != 0, tab[i + 2] != 0
    out, i = array3(tab, i + 3)
    ckpt, i = array4(tab, i)
    last, i = array3(tab, i)
    job = claim(tab)
    while job < tab[1]:
        _fwd_one(u, dt, z, Bm, Cm, A_t, D, bias, softplus, has_z, reverse, out, ckpt, last, job)
        job = claim(tab)


@njit(inline='always', **_JIT)
def _gate_grads(dout, u, z, ys, D, b, t, j, e0, w, has_z, vecs, dz):
    """Gradient through out = (y + D u) * SiLU(z), y = ys[j] = C.h: g = vecs[1] = dL/d(y + D u), dz[b, t] = dL/dz;
    accumulates dD in vecs[0]. D is the block's (BLOCK,) view."""
    ur, gr = u[b, t, e0:e0 + w], dout[b, t, e0:e0 + w]
    if has_z:
        zr, dzr = z[b, t, e0:e0 + w], dz[b, t, e0:e0 + w]
        for e in range(w):
            zv = zr[e]
            uv = ur[e]
            sig = _sigmoid(zv)
            go = gr[e]
            dzr[e] = go * (ys[j, e] + D[e] * uv) * sig * (np.float32(1.0) + zv * (np.float32(1.0) - sig))
            go = go * zv * sig
            vecs[1, e] = go
            vecs[0, e] += go * uv
    else:
        for e in range(w):
            go = gr[e]
            vecs[1, e] = go
            vecs[0, e] += go * ur[e]


@njit(inline='always', **_JIT)
def _adjoint_step(lam, hs, decays, Ab, dts, dtus, Bm, Cm, b, t, j, vecs, dA, dB_part, dC_part, blk, w):
    """Adjoint of step j of a chunk (token t), g = vecs[1]. lam (N, BLOCK) enters as dL/dh_t from later steps and
    leaves as the part of dL/dh_{t-1} that flows through h_t. Accumulates dA; writes sB = vecs[2] = dL/d(delta u),
    ddt = vecs[3] (through exp(delta A)), dB_part[b, blk, t], dC_part[b, blk, t]."""
    for e in range(w):
        vecs[2, e] = 0.0
        vecs[3, e] = 0.0
    for n in range(lam.shape[0]):
        bn = Bm[b, t, n]
        cn = Cm[b, t, n]
        acc_b = np.float32(0.0)
        acc_c = np.float32(0.0)
        for e in range(w):
            gv = vecs[1, e]
            dn = decays[j, n, e]
            acc_c += hs[j + 1, n, e] * gv
            lv = lam[n, e] + cn * gv
            acc_b += lv * dtus[j, e]
            vecs[2, e] += lv * bn
            q = lv * hs[j, n, e] * dn
            dA[n, e] += q * dts[j, e]
            vecs[3, e] += q * Ab[n, e]
            lam[n, e] = lv * dn
        dB_part[b, blk, t, n] = acc_b
        dC_part[b, blk, t, n] = acc_c


@njit(inline='always', **_JIT)
def _input_grads(vecs, dts, u, dt, D, bias, b, t, j, e0, w, softplus, du, ddelta):
    """du = D g + sB delta and ddelta = (ddt + sB u) (* sigmoid(dt + bias) under softplus) at token t, with
    g, sB, ddt = vecs[1:4]; D and bias are the block's (BLOCK,) views."""
    ur, dtr, dur, ddr = u[b, t, e0:e0 + w], dt[b, t, e0:e0 + w], du[b, t, e0:e0 + w], ddelta[b, t, e0:e0 + w]
    for e in range(w):
        sb = vecs[2, e]
        dur[e] = D[e] * vecs[1, e] + sb * dts[j, e]
        grad = vecs[3, e] + sb * ur[e]
        if softplus:
            grad = grad * _sigmoid(dtr[e] + bias[e])
        ddr[e] = grad


@njit(inline='always', **_JIT)
def _bwd_job(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
             du, ddelta, dz, dA_part, dD_part, dB_part, dC_part, b, blk, w):
    """Backward scan of batch b, channel block blk (channels blk * BLOCK .. + w)."""
    length = du.shape[1]
    dstate = A_t.shape[0]
    e0 = blk * BLOCK
    Ab, A2 = _block_A(A_t, e0, w, np.float32(1.0)), _block_A(A_t, e0, w, np.float32(LOG2E))
    Db, biasb = D[e0:e0 + w], bias[e0:e0 + w]
    hs = np.zeros((CHUNK + 1, dstate, BLOCK), np.float32)
    decays = np.empty((CHUNK, dstate, BLOCK), np.float32)
    dts, dtus = np.empty((CHUNK, BLOCK), np.float32), np.empty((CHUNK, BLOCK), np.float32)
    ys = np.empty((CHUNK, BLOCK), np.float32)
    lam, dA = np.zeros((dstate, BLOCK), np.float32), np.zeros((dstate, BLOCK), np.float32)
    vecs = np.zeros((4, BLOCK), np.float32)  # dD, g, sB, ddt
    for n in range(dstate):
        for e in range(w):
            lam[n, e] = dlast[b, e0 + e, n]
    for k in range(ckpt.shape[1] - 1, -1, -1):
        i0 = k * CHUNK
        steps = min(CHUNK, length - i0)
        for n in range(dstate):
            row = ckpt[b, k, n, e0:e0 + w]
            for e in range(w):
                hs[0, n, e] = row[e]
        for j in range(steps):
            t = _token(i0 + j, length, reverse)
            _delta_row(dt, u, b, t, biasb, e0, w, softplus, dts, dtus, j)
            _step_keep(hs, A2, dts, dtus, Bm, Cm, b, t, decays, ys, j, w)
        for j in range(steps - 1, -1, -1):
            t = _token(i0 + j, length, reverse)
            _gate_grads(dout, u, z, ys, Db, b, t, j, e0, w, has_z, vecs, dz)
            _adjoint_step(lam, hs, decays, Ab, dts, dtus, Bm, Cm, b, t, j, vecs, dA, dB_part, dC_part, blk, w)
            _input_grads(vecs, dts, u, dt, Db, biasb, b, t, j, e0, w, softplus, du, ddelta)
    for n in range(dstate):
        for e in range(w):
            dA_part[b, n, e0 + e] = dA[n, e]
    for e in range(w):
        dD_part[b, e0 + e] = vecs[0, e]


@njit(inline='always', **_JIT)
def _bwd_one(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
             du, ddelta, dz, dA_part, dD_part, dB_part, dC_part, job):
    """Job ``job`` of the backward scan."""
    b, e0, w = _job_span(job, du.shape[2], BLOCK)
    blk = e0 // BLOCK
    if w == BLOCK:
        _bwd_job(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
                 du, ddelta, dz, dA_part, dD_part, dB_part, dC_part, b, blk, BLOCK)
    else:
        _bwd_job(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
                 du, ddelta, dz, dA_part, dD_part, dB_part, dC_part, b, blk, w)


@njit(parallel=True, **_JIT)
def _scan_bwd(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
              du, ddelta, dz, dA_part, dD_part, dB_part, dC_part):
    """Backward scan. Writes du, ddelta (w.r.t. the raw delta) (B, L, E), dz (B, L, E) when has_z (else a placeholder)
    and per-job partial sums dA_part (B, N, E), dD_part (B, E), dB_part, dC_part (B, n_blocks, L, N)."""
    for job in prange(_n_jobs(du.shape[0], du.shape[2], BLOCK)):
        _bwd_one(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
                 du, ddelta, dz, dA_part, dD_part, dB_part, dC_part, job)


def _scan_bwd_team(data):
    """Team function of :func:`_scan_bwd`."""
    tab = table_of(data)
    u, i = array3(tab, 2)
    dt, i = array3(tab, i)
    z, i = array3(tab, i)
    Bm, i = array3(tab, i)
    Cm, i = array3(tab, i)
    dout, i = array3(tab, i)
    A_t, i = array2(tab, i)
    D, i = array1(tab, i)
    bias, i = array1(tab, i)
    softplus, has_z, reverse = tab[i] != 0, tab[i + 1] != 0, tab[i + 2] != 0
    dlast, i = array3(tab, i + 3)
    ckpt, i = array4(tab, i)
    du, i = array3(tab, i)
    ddelta, i = array3(tab, i)
    dz, i = array3(tab, i)
    dA_part, i = array3(tab, i)
    dD_part, i = array2(tab, i)
    dB_part, i = array4(tab, i)
    dC_part, i = array4(tab, i)
    job = claim(tab)
    while job < tab[1]:
        _bwd_one(u, dt, z, Bm, Cm, dout, A_t, D, bias, softplus, has_z, reverse, dlast, ckpt,
                 du, ddelta, dz, dA_part, dD_part, dB_part, dC_part, job)
        job = claim(tab)


# ----------------------------------------------------------------------------------------------------------------
# torch wrapper
# ----------------------------------------------------------------------------------------------------------------
def _array(x: torch.Tensor) -> np.ndarray:
    """C-contiguous fp32 numpy view of x (a copy when x is strided or of another dtype); the kernels of this module,
    ``conv_numba`` and ``explain.gradcam_numba`` take their inputs so."""
    return x.detach().float().contiguous().numpy()


def _time_major(x: Optional[torch.Tensor]) -> np.ndarray:
    """``(B, X, L)`` -> C-contiguous fp32 ``(B, L, X)`` array; free for a channels-last fp32 view (the ViM mixer's
    u and dt), a copy otherwise. None -> a (1, 1, 1) placeholder."""
    if x is None:
        return np.zeros((1, 1, 1), np.float32)
    return _array(x.transpose(1, 2))


def _vector(x: Optional[torch.Tensor], dim: int) -> np.ndarray:
    """``(E,)`` fp32, zeros when x is None (D = 0 and delta_bias = 0 are the absent values)."""
    if x is None:
        return np.zeros(dim, np.float32)
    return _array(x)


class _NumbaScanFn(torch.autograd.Function):
    """Selective scan through the numba kernels, analytic backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse):
        batch, dim, length = u.shape
        dstate = A.shape[1]
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.flags = (bool(delta_softplus), z is not None, bool(reverse))
        arrays = [_time_major(x) for x in (u, delta, z, B, C)]
        params = (_array(A.t()), _vector(D, dim), _vector(delta_bias, dim))
        out = np.empty((batch, length, dim), np.float32)
        keep = any(ctx.needs_input_grad)  # the backward's checkpoints, not needed without gradients
        ckpt = torch.empty(batch, math.ceil(length / CHUNK) if keep else 0, dstate, dim)
        last = np.empty((batch, dim, dstate), np.float32)
        launch(_scan_fwd, _scan_fwd_team, _n_jobs(batch, dim, BLOCK), *arrays, *params, *ctx.flags, out, ckpt.numpy(),
               last)
        ctx.ckpt = ckpt
        result = torch.from_numpy(out).transpose(1, 2).to(u.dtype)
        if return_last_state:
            return result, torch.from_numpy(last)
        return result

    @staticmethod
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        batch, dim, length = u.shape
        dstate = A.shape[1]
        nblk = math.ceil(dim / BLOCK)
        dlast = rest[0] if rest and rest[0] is not None else torch.zeros(batch, dim, dstate)
        arrays = [_time_major(x) for x in (u, delta, z, B, C, dout)]
        params = (_array(A.t()), _vector(D, dim), _vector(delta_bias, dim))
        grads = [np.empty((batch, length, dim) if i < 2 or z is not None else (1, 1, 1), np.float32)
                 for i in range(3)]  # du, ddelta, dz (a placeholder without z)
        dA_part = np.empty((batch, dstate, dim), np.float32)
        dD_part = np.empty((batch, dim), np.float32)
        dBC_part = [np.zeros((batch, nblk, length, dstate), np.float32) for _ in range(2)]
        launch(_scan_bwd, _scan_bwd_team, _n_jobs(batch, dim, BLOCK), *arrays, *params, *ctx.flags, _array(dlast),
               ctx.ckpt.numpy(), *grads, dA_part, dD_part, *dBC_part)
        du, ddelta, dz = (torch.from_numpy(g).transpose(1, 2) for g in grads)
        dB, dC = (torch.from_numpy(p).sum(dim=1).transpose(1, 2) for p in dBC_part)
        values = (du, ddelta, torch.from_numpy(dA_part).sum(dim=0).t(), dB, dC, torch.from_numpy(dD_part).sum(dim=0),
                  dz, ddelta.sum(dim=(0, 2)))
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        return tuple(None if x is None else g.to(x.dtype) for g, x in zip(values, inputs)) + (None,) * 3


def selective_scan_numba(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                         delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                         return_last_state: bool = False, reverse: bool = False
                         ) -> torch.Tensor | Tuple[torch.Tensor, torch.Tensor]:
    """Compiled CPU selective scan; same arguments and results as ``selective_scan_ref``.

    Args:
        u, delta, z: ``(B, E, L)`` CPU tensors (channels-last views, as the ViM mixer passes, avoid a copy).
        A: ``(E, N)`` real. B, C: ``(B, N, L)``. D, delta_bias: ``(E,)`` or None.
        delta_softplus, return_last_state: as in the reference.
        reverse: scan from token L-1 down to 0 (equals flipping every sequence input and the output).

    Returns:
        out ``(B, E, L)`` in u's dtype, or ``(out, last_state (B, E, N) fp32)``.
    """
    if u.device.type != 'cpu':
        raise RuntimeError("selective scan impl 'numba' runs on CPU tensors; use 'auto' for CUDA tensors.")
    return _NumbaScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse)
