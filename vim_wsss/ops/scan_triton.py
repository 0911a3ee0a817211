"""Triton selective scan for CUDA tensors, forward and backward, behind :func:`vim_wsss.ops.selective_scan` as 'triton'.

Same semantics and arguments as :func:`vim_wsss.ops.selective_scan_ref` plus ``reverse`` (scan from the last token to
the first without flipping tensors). fp32 arithmetic whatever the input dtype; the output has u's dtype.

One program per (batch, block of ``BLOCK_E`` channels) holds the ``(BLOCK_E, N)`` state in registers and walks the
sequence; inputs are read through their strides (no copies). The forward stores the state every ``CHUNK`` steps;
the backward recomputes each chunk's states into a per-program scratch buffer, then runs the adjoint recurrence in
reverse and writes per-block partial sums for the gradients of the shared B, C, A, D (summed by torch).

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported, on
CPU tensors): that is how the CPU test suite checks them against the reference, on small shapes. The first launch on
a GPU compiles them (seconds; Triton caches them in ``~/.triton``).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

CHUNK = 16
INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _time_index(i, length, REVERSE: tl.constexpr):
    if REVERSE:
        return length - 1 - i
    return i


@triton.jit
def _load_step(u_ptr, dt_ptr, B_ptr, C_ptr, su, sd, sb, sc, t, offs_e, offs_n, mask_e, mask_n, bias,
               SOFTPLUS: tl.constexpr):
    """One step's u, raw delta + bias, delta (BLOCK_E,) and B, C (N,)."""
    u = tl.load(u_ptr + offs_e * su[1] + t * su[2], mask=mask_e, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + offs_e * sd[1] + t * sd[2], mask=mask_e, other=0.0).to(tl.float32) + bias
    delta = _softplus(raw) if SOFTPLUS else raw
    b = tl.load(B_ptr + offs_n * sb[1] + t * sb[2], mask=mask_n, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + offs_n * sc[1] + t * sc[2], mask=mask_n, other=0.0).to(tl.float32)
    return u, raw, delta, b, c


@triton.jit
def _block_params(A_ptr, D_ptr, bias_ptr, pid_e, dim, dstate, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """Channel / state offsets and masks of block pid_e, its A (BLOCK_E, BLOCK_N), D and delta bias (BLOCK_E,)."""
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    mask_e, mask_n = offs_e < dim, offs_n < dstate
    mask_en = mask_e[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_e[:, None] * dstate + offs_n[None, :], mask=mask_en, other=0.0)
    D = tl.load(D_ptr + offs_e, mask=mask_e, other=0.0)
    bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0)
    return offs_e, offs_n, mask_e, mask_n, mask_en, A, D, bias


@triton.jit
def _scan_fwd_kernel(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, out_ptr, ckpt_ptr, last_ptr,
                     su0, su1, su2, sd0, sd1, sd2, sz0, sz1, sz2, sb0, sb1, sb2, sc0, sc1, sc2, dim, dstate, length,
                     SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, REVERSE: tl.constexpr, BLOCK_E: tl.constexpr,
                     BLOCK_N: tl.constexpr, CHUNK_: tl.constexpr):
    """out (B, E, L) contiguous, ckpt (B, n_chunks, E, N), last (B, E, N)."""
    pid_b, pid_e = tl.program_id(0), tl.program_id(1)
    offs_e, offs_n, mask_e, mask_n, mask_en, A, D, bias = _block_params(A_ptr, D_ptr, bias_ptr, pid_e, dim, dstate,
                                                                         BLOCK_E, BLOCK_N)
    u_ptr += pid_b * su0
    dt_ptr += pid_b * sd0
    z_ptr += pid_b * sz0
    B_ptr += pid_b * sb0
    C_ptr += pid_b * sc0
    state_offs = offs_e[:, None] * dstate + offs_n[None, :]
    h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    for i in range(length):
        t = _time_index(i, length, REVERSE)
        if i % CHUNK_ == 0:
            tl.store(ckpt_ptr + ((pid_b * tl.cdiv(length, CHUNK_) + i // CHUNK_) * dim) * dstate + state_offs, h,
                     mask=mask_en)
        u, raw, delta, b, c = _load_step(u_ptr, dt_ptr, B_ptr, C_ptr, (su0, su1, su2), (sd0, sd1, sd2),
                                         (sb0, sb1, sb2), (sc0, sc1, sc2), t, offs_e, offs_n, mask_e, mask_n, bias,
                                         SOFTPLUS)
        h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1) + D * u
        if HAS_Z:
            z = tl.load(z_ptr + offs_e * sz1 + t * sz2, mask=mask_e, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + (pid_b * dim + offs_e) * length + t, y, mask=mask_e)
    tl.store(last_ptr + pid_b * dim * dstate + state_offs, h, mask=mask_en)


@triton.jit
def _scan_bwd_kernel(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr,
                     scratch_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dB_ptr, dC_ptr,
                     su0, su1, su2, sd0, sd1, sd2, sz0, sz1, sz2, sb0, sb1, sb2, sc0, sc1, sc2, sg0, sg1, sg2,
                     dim, dstate, length, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_: tl.constexpr):
    """du, ddelta, dz (B, E, L) contiguous; per-program partial sums dA (B, E, N), dD (B, E), dB, dC
    (B, n_blocks, L, N); scratch (B, n_blocks, CHUNK, BLOCK_E, BLOCK_N)."""
    pid_b, pid_e = tl.program_id(0), tl.program_id(1)
    n_blocks = tl.num_programs(1)
    offs_e, offs_n, mask_e, mask_n, mask_en, A, D, bias = _block_params(A_ptr, D_ptr, bias_ptr, pid_e, dim, dstate,
                                                                         BLOCK_E, BLOCK_N)
    u_ptr += pid_b * su0
    dt_ptr += pid_b * sd0
    z_ptr += pid_b * sz0
    B_ptr += pid_b * sb0
    C_ptr += pid_b * sc0
    dout_ptr += pid_b * sg0
    state_offs = offs_e[:, None] * dstate + offs_n[None, :]
    tile = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + offs_n[None, :]
    scratch_ptr += (pid_b * n_blocks + pid_e) * CHUNK_ * BLOCK_E * BLOCK_N
    part_row = (pid_b * n_blocks + pid_e) * length
    n_chunks = tl.cdiv(length, CHUNK_)
    lam = tl.load(dlast_ptr + pid_b * dim * dstate + state_offs, mask=mask_en, other=0.0)
    dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        i0 = k * CHUNK_
        steps = tl.minimum(CHUNK_, length - i0)
        h0 = tl.load(ckpt_ptr + ((pid_b * n_chunks + k) * dim) * dstate + state_offs, mask=mask_en, other=0.0)
        h = h0
        for j in range(steps):  # recompute the chunk's states into scratch
            t = _time_index(i0 + j, length, REVERSE)
            u, raw, delta, b, c = _load_step(u_ptr, dt_ptr, B_ptr, C_ptr, (su0, su1, su2), (sd0, sd1, sd2),
                                             (sb0, sb1, sb2), (sc0, sc1, sc2), t, offs_e, offs_n, mask_e, mask_n,
                                             bias, SOFTPLUS)
            h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * b[None, :]
            tl.store(scratch_ptr + j * BLOCK_E * BLOCK_N + tile, h)
        tl.debug_barrier()
        for jj in range(steps):
            j = steps - 1 - jj
            t = _time_index(i0 + j, length, REVERSE)
            u, raw, delta, b, c = _load_step(u_ptr, dt_ptr, B_ptr, C_ptr, (su0, su1, su2), (sd0, sd1, sd2),
                                             (sb0, sb1, sb2), (sc0, sc1, sc2), t, offs_e, offs_n, mask_e, mask_n,
                                             bias, SOFTPLUS)
            h_cur = tl.load(scratch_ptr + j * BLOCK_E * BLOCK_N + tile)
            h_prev = tl.load(scratch_ptr + (j - 1) * BLOCK_E * BLOCK_N + tile, mask=(tile >= 0) & (j > 0), other=0.0)
            h_prev = tl.where(j > 0, h_prev, h0)
            go = tl.load(dout_ptr + offs_e * sg1 + t * sg2, mask=mask_e, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(z_ptr + offs_e * sz1 + t * sz2, mask=mask_e, other=0.0).to(tl.float32)
                sig = tl.sigmoid(z)
                pre = tl.sum(h_cur * c[None, :], axis=1) + D * u
                tl.store(dz_ptr + (pid_b * dim + offs_e) * length + t, go * pre * sig * (1.0 + z * (1.0 - sig)),
                         mask=mask_e)
                go = go * z * sig
            dD += go * u
            decay = tl.exp(delta[:, None] * A)
            lam = lam + c[None, :] * go[:, None]
            q = lam * h_prev * decay
            dA += q * delta[:, None]
            s_b = tl.sum(lam * b[None, :], axis=1)
            ddt = tl.sum(q * A, axis=1) + s_b * u
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            tl.store(du_ptr + (pid_b * dim + offs_e) * length + t, D * go + s_b * delta, mask=mask_e)
            tl.store(ddelta_ptr + (pid_b * dim + offs_e) * length + t, ddt, mask=mask_e)
            tl.store(dB_ptr + (part_row + t) * dstate + offs_n, tl.sum(lam * (delta * u)[:, None], axis=0),
                     mask=mask_n)
            tl.store(dC_ptr + (part_row + t) * dstate + offs_n, tl.sum(h_cur * go[:, None], axis=0), mask=mask_n)
            lam = lam * decay
        tl.debug_barrier()
    tl.store(dA_ptr + pid_b * dim * dstate + state_offs, dA, mask=mask_en)
    tl.store(dD_ptr + pid_b * dim + offs_e, dD, mask=mask_e)


def _blocks(dim: int, dstate: int) -> Tuple[int, int]:
    return min(32, triton.next_power_of_2(dim)), triton.next_power_of_2(dstate)


def _strides(x: Optional[torch.Tensor]) -> Tuple[int, int, int]:
    return (0, 0, 0) if x is None else tuple(x.stride())


class _TritonScanFn(torch.autograd.Function):
    """Selective scan through the Triton kernels, analytic backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse):
        batch, dim, length = u.shape
        dstate = A.shape[1]
        block_e, block_n = _blocks(dim, dstate)
        params = _params(A, D, delta_bias, dim)
        out = u.new_empty(batch, dim, length, dtype=torch.float32)
        ckpt = u.new_empty(batch, math.ceil(length / CHUNK), dim, dstate, dtype=torch.float32)
        last = u.new_empty(batch, dim, dstate, dtype=torch.float32)
        flags = dict(SOFTPLUS=bool(delta_softplus), HAS_Z=z is not None, REVERSE=bool(reverse))
        grid = (batch, triton.cdiv(dim, block_e))
        _scan_fwd_kernel[grid](u, delta, u if z is None else z, B, C, *params, out, ckpt, last,
                               *_strides(u), *_strides(delta), *_strides(z), *_strides(B), *_strides(C),
                               dim, dstate, length, **flags, BLOCK_E=block_e, BLOCK_N=block_n, CHUNK_=CHUNK)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.flags = flags
        result = out.to(u.dtype)
        return (result, last) if return_last_state else result

    @staticmethod
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        dstate = A.shape[1]
        block_e, block_n = _blocks(dim, dstate)
        n_blocks = triton.cdiv(dim, block_e)
        dlast = rest[0] if rest and rest[0] is not None else u.new_zeros(batch, dim, dstate, dtype=torch.float32)
        f32 = dict(dtype=torch.float32, device=u.device)
        du, ddelta, dz = (torch.zeros(batch, dim, length, **f32) for _ in range(3))
        dA, dD = torch.zeros(batch, dim, dstate, **f32), torch.zeros(batch, dim, **f32)
        dB, dC = (torch.zeros(batch, n_blocks, length, dstate, **f32) for _ in range(2))
        scratch = torch.empty(batch, n_blocks, CHUNK, block_e, block_n, **f32)
        _scan_bwd_kernel[(batch, n_blocks)](
            u, delta, u if z is None else z, B, C, *_params(A, D, delta_bias, dim), dout, dlast.float().contiguous(),
            ckpt, scratch, du, ddelta, dz, dA, dD, dB, dC, *_strides(u), *_strides(delta), *_strides(z),
            *_strides(B), *_strides(C), *_strides(dout), dim, dstate, length, **ctx.flags, BLOCK_E=block_e,
            BLOCK_N=block_n, CHUNK_=CHUNK)
        values = (du, ddelta, dA.sum(0), dB.sum(1).transpose(1, 2), dC.sum(1).transpose(1, 2), dD.sum(0), dz,
                  ddelta.sum(dim=(0, 2)))
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        return tuple(None if x is None else g.to(x.dtype) for g, x in zip(values, inputs)) + (None,) * 3


def _params(A: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], dim: int
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (E, N), D and delta_bias (E,) as contiguous fp32 (zeros when absent)."""
    zeros = A.new_zeros(dim, dtype=torch.float32)
    return (A.float().contiguous(), zeros if D is None else D.float().contiguous(),
            zeros if delta_bias is None else delta_bias.float().contiguous())


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                          return_last_state: bool = False, reverse: bool = False
                          ) -> torch.Tensor | Tuple[torch.Tensor, torch.Tensor]:
    """Triton selective scan; same arguments and results as ``selective_scan_ref`` plus ``reverse``.

    Args:
        u, delta, z: ``(B, E, L)`` CUDA tensors (CPU tensors only under ``TRITON_INTERPRET=1``), any strides.
        A: ``(E, N)`` real. B, C: ``(B, N, L)``. D, delta_bias: ``(E,)`` or None.

    Returns:
        out ``(B, E, L)`` in u's dtype, or ``(out, last_state (B, E, N) fp32)``.
    """
    if not (u.is_cuda or INTERPRETED):
        raise RuntimeError("selective scan impl 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for tests).")
    return _TritonScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse)
