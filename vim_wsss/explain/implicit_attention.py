"""Implicit attention of a (bidirectional) Mamba mixer, exact and vectorised.

Ground truth: "Explaining Modern Gated-Linear RNNs via a Unified Implicit Attention Formulation" (Zimerman, Ali,
Wolf, ICLR 2025, https://arxiv.org/abs/2405.16504) and its code (``Itamarzimm/UnifiedImplicitAttnRepr``), summarised
in the project's ``implicit-attention.md`` sections 1-2. For one direction and one inner channel c, the mixer output
before ``out_proj`` is ``y_c = H_c x_c + r_c`` with ``x = in_proj(hidden)[:, :E]`` (before the conv) and

    H_c = diag(SiLU(z_c)) . alpha_c . diag(sigmoid(conv_out_c)) . M_c
    alpha_c[i, j] = sum_n C_i[n] exp(sum_{k=j+1..i} delta_k[c] A[c, n]) delta_j[c] B_j[n]     (j <= i, else 0)
    M_c[i, i - m] = w_c[K - 1 - m]                                                           (causal conv, Toeplitz)

and ``r_c`` the affine remainder (D-skip and conv-bias terms, :func:`mamba_affine_remainder`). The bidirectional
mixer averages both scans, so its operator is ``1/2 (H_f + J H_b J)`` with J the token flip.

Numerics: the log-decays are ``S[t, n] = A[n] D_t`` with ``D = cumsum(delta)`` (float64), so every exponent
``S_i - S_j = A (D_i - D_j)`` is formed from a float64 difference; entries with j > i (positive exponents) are
masked *before* any exp. Query rows use the direct masked exp. Full matrices use a block-low-rank factorisation that
never overflows: for rows in block b (start i0) and columns in an earlier block b' (next block start s' <= i0),
``exp(S_i - S_j) = exp(S_i - S_i0) exp(S_i0 - S_s') exp(S_s' - S_j)`` with every factor <= 1, i.e. a batched matmul
over n per channel (both scan directions stacked along n, the backward one mirrored by flipping its small factor
tensors, so one matmul writes the final bidirectional matrix). Diagonal blocks use the rank-N product with a factor
``exp(S_i0 - S_j) <= exp(range)`` when the block's decay range is below :data:`FAST_DIAG_RANGE`, else the direct masked
exp. The causal conv is folded into the column factors block-locally. Memory is bounded by chunking over channels.

Everything here is computed without autograd (``torch.no_grad``): the matrices are explanations, not training
signals. All results are fp32 whatever the autocast state.
"""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vim_wsss.ops import numba_available

__all__ = [
    'PARTS', 'DIRECTIONS', 'mamba_attention', 'attention_channel_mean', 'iter_mamba_attention',
    'mamba_affine_remainder', 's6_matrix', 'conv_matrix', 'apply_conv_right', 'ali_s6_rows', 'scan_internals',
    'ATTENTION_IMPLS', 'resolve_attention_impl',
]

#: Sub-components of the implicit attention that can be switched off (replaced by the identity) for ablations.
PARTS = ('s6', 'conv', 'act', 'gate')
#: 'f' forward scan, 'b' backward scan (returned in original token order, i.e. J H_b J), 'both' = (f + b) / 2.
DIRECTIONS = ('f', 'b', 'both')

#: Default element budget for the temporaries of one channel chunk (fp32 elements, about 256 MB).
DEFAULT_CHUNK_ELEMENTS = 1 << 26
#: Diagonal blocks whose decay range (nats) stays below this use a rank-N product (factor <= e^range, relative
#: error <= ~2 * range * 6e-8); wider ones use the direct masked exp.
FAST_DIAG_RANGE = 40.0

RowsLike = Union[None, int, Sequence[int], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------
def _cumsum64(delta: torch.Tensor) -> torch.Tensor:
    """``D[b, c, t] = sum_{k<=t} delta[b, c, k]`` in float64: ``(B, E, L)``.

    The log-decays are ``S[b, c, t, n] = A[c, n] D[b, c, t]`` (A is constant in time), so every exponent
    ``S_i - S_j = A (D_i - D_j)`` is formed from a float64 difference of D and never from large fp32 sums.
    """
    return torch.cumsum(delta.double(), dim=-1)


def _times_A(diff: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``diff[..., None] * A`` in fp32 for ``diff`` ``(B, E, *rest)`` float64 and ``A`` ``(E, N)``:
    ``(B, E, *rest, N)``."""
    shape = (1, A.shape[0]) + (1,) * (diff.dim() - 2) + (A.shape[1],)
    return diff.float().unsqueeze(-1) * A.float().view(shape)


def _rows_tensor(rows: RowsLike, length: int, device: torch.device) -> Optional[torch.Tensor]:
    if rows is None:
        return None
    if isinstance(rows, int):
        rows = [rows]
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device).reshape(-1)
    if rows_t.numel() == 0:
        raise ValueError('rows is empty; pass None for the full matrix or at least one query row.')
    rows_t = torch.where(rows_t < 0, rows_t + length, rows_t)
    if int(rows_t.min()) < 0 or int(rows_t.max()) >= length:
        raise ValueError(f'rows {rows} out of range for sequence length {length}.')
    return rows_t


#: Log-decays below -EXP_FLOOR are clamped before exp in the row path: exp(-60) ~ 1e-26 is nothing next to the
#: diagonal's exp(0) = 1, and it keeps fp32 out of the denormal range, where x86 exp and mul are ~10x slower.
EXP_FLOOR = 60.0


def _s6_rows(D: torch.Tensor, A: torch.Tensor, dB: torch.Tensor, C_rows: torch.Tensor,
             exp_rows: torch.Tensor) -> torch.Tensor:
    """Rows of alpha by the direct masked exp.

    Args:
        D: float64 cumulative step sizes ``(B, E, L)``.
        A: ``(E, N)``.
        dB: ``delta_j B_j[n]`` (column factors, possibly pre-scaled) ``(B, E, L, N)`` fp32.
        C_rows: ``C_i[n]`` for the query rows (possibly pre-scaled) ``(B, 1 or E, R, N)`` fp32.
        exp_rows: index p of the exponent ``S_p - S_j`` per query row ``(R,)``; columns j > p are zero.

    Returns:
        ``(B, E, R, L)`` fp32.
    """
    length = D.shape[-1]
    cols = int(exp_rows.max()) + 1  # columns past the last query row are zero: not computed
    Dc = D[..., :cols]
    diff = _times_A(D[:, :, exp_rows].unsqueeze(3) - Dc.unsqueeze(2), A)  # (B, E, R, cols, N): S_p - S_j
    weights = diff.clamp_(min=-EXP_FLOOR).exp_()
    keep = torch.arange(cols, device=D.device)[None, :] <= exp_rows[:, None]  # (R, cols)
    if not bool(keep.all()):
        weights.masked_fill_(~keep[:, :, None], 0.0)
    weights.mul_(dB[:, :, :cols].unsqueeze(2))
    out = torch.matmul(weights, C_rows.unsqueeze(-1)).squeeze(-1)
    return F.pad(out, (0, length - cols)) if cols < length else out


class _BlockFactors:
    """Block-low-rank factors of one direction's ``alpha`` (optionally ``alpha @ M``), on a padded grid.

    The padded grid has ``Lp = nb * blk`` positions; the sequence occupies ``[pad, Lp)`` when ``front`` (forward
    scan, original order) and ``[0, L)`` otherwise (backward scan in its own order, whose mirror ``J . J`` then lands
    on ``[pad, Lp)`` of the original order, the same cells as the forward scan's).

    For rows i in block b (start i0) and columns j in an earlier block b' (next block start s' <= i0)::

        exp(S_i - S_j) = exp(S_i - S_i0) * exp(S_i0 - S_s') * exp(S_s' - S_j)     (every factor <= 1)

    so the off-diagonal part is a matmul over n of row factors ``C_i exp(S_i - S_i0)`` with column factors
    ``T[b, b'] R[b', j]``; the diagonal blocks use the direct masked exp of block-local sums. A conv ``M`` acting on
    the right is applied block-locally to R (with a K-1 spill into the previous block) and to the diagonal blocks
    (spilling K-1 columns to the left), so ``alpha @ M`` needs no full-size pass.
    """

    def __init__(self, D: torch.Tensor, A: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, block: int,
                 conv_weight: Optional[torch.Tensor], front: bool) -> None:
        bsz, chans, length, nstate = dB.shape
        self.taps = conv_weight.shape[-1] if conv_weight is not None else 1
        block = max(block, self.taps - 1, 1)
        nblk = -(-length // block)
        padded = nblk * block
        pad = padded - length
        if pad and front:  # D before the first step is 0 <= D_0: the padded prefix keeps S = A D monotone
            D = F.pad(D, (pad, 0))
            dB, C = F.pad(dB, (0, 0, pad, 0)), F.pad(C, (0, 0, pad, 0))
        elif pad:  # replicate the last D: no positive exponent
            D = torch.cat([D, D[:, :, -1:].expand(-1, -1, pad)], dim=2)
            dB, C = F.pad(dB, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
        self.shape = (bsz, chans, nblk, block, nstate)
        self.block, self.nblk, self.padded, self.pad = block, nblk, padded, pad
        self.weight = conv_weight
        device = D.device
        starts = torch.arange(nblk, device=device) * block
        D_start = D[:, :, starts]  # (B, E, nb)
        D_next = D[:, :, (starts + block).clamp(max=padded - 1)]  # start of block b' + 1
        D_blk = D.view(bsz, chans, nblk, block)
        local = _times_A(D_blk - D_start.unsqueeze(3), A)  # S_i - S_i0 <= 0: (B, E, nb, blk, N)
        C_blk = C.reshape(C.shape[0], C.shape[1], nblk, block, nstate)
        dB_blk = dB.view(bsz, chans, nblk, block, nstate)
        self.left = local.exp().mul_(C_blk)  # (B, E, nb, blk, N)
        R = _times_A(D_next.unsqueeze(3) - D_blk, A).exp_().mul_(dB_blk)  # exp(S_s' - S_j) dB_j
        earlier = torch.ones(nblk, nblk, dtype=torch.bool, device=device).tril_(-1)  # b' < b
        T = _times_A(D_start.unsqueeze(3) - D_next.unsqueeze(2), A)  # (B, E, nb(b), nb(b'), N)
        self.T = T.masked_fill_(~earlier[:, :, None], float('-inf')).exp_()
        if conv_weight is None:
            self.R, self.spill = R, None
        else:
            self.R, self.spill = self._conv_blocks(R, conv_weight)
        self.diag = self._diagonal_blocks(local, dB_blk, C_blk)

    def _diagonal_blocks(self, local: torch.Tensor, dB_blk: torch.Tensor, C_blk: torch.Tensor) -> torch.Tensor:
        """``alpha`` restricted to the diagonal blocks, lower-triangular: ``(B, E, nb, blk_i, blk_j)``.

        Blocks whose decay range ``S_i0 - S_last`` is below :data:`FAST_DIAG_RANGE` (every n) use the rank-N product
        ``(C_i exp(S_i - S_i0)) . (exp(S_i0 - S_j) dB_j)`` (the second factor is at most exp(range)), then the upper
        triangle is zeroed; the other blocks use the direct masked ``exp(S_i - S_j)``.
        """
        block = local.shape[3]
        tri = torch.ones(block, block, dtype=torch.bool, device=local.device).tril_()
        span = -local[:, :, :, -1].amin(dim=-1)  # (B, E, nb): largest decay exponent inside the block
        fast = span <= FAST_DIAG_RANGE
        grow = torch.where(fast[..., None, None], -local, torch.zeros_like(local)).exp_().mul_(dB_blk)
        diag = torch.matmul(self.left, grow.transpose(-1, -2)).mul_(tri)  # (B, E, nb, blk_i, blk_j)
        if not bool(fast.all()):
            slow = torch.nonzero(~fast, as_tuple=True)
            loc = local[slow]  # (P, blk, N)
            direct = loc.unsqueeze(2) - loc.unsqueeze(1)  # S_i - S_j
            direct.masked_fill_(~tri[:, :, None], float('-inf')).exp_().mul_(dB_blk[slow].unsqueeze(1))
            C_sel = C_blk.expand(-1, local.shape[1], -1, -1, -1)[slow]
            diag[slow] = torch.matmul(direct, C_sel.unsqueeze(-1)).squeeze(-1)
        return diag

    @staticmethod
    def _conv_blocks(R: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """In-block conv of the column factors and the spill from the next block.

        Returns ``Rc`` ``(B, e, nb, blk, N)`` = ``sum_m w[K-1-m] R[b', jj + m]`` over ``jj + m < blk``, and ``spill``
        ``(B, e, nb, K-1, N)``: for the last K-1 positions of block b', the terms ``w[K-1-m] R[b'+1, jj + m - blk]``
        (scaled later by block b'+1's transfer factor).
        """
        taps, blk = weight.shape[1], R.shape[3]
        w = weight.float().view(1, weight.shape[0], 1, 1, 1, taps)
        Rc = R * w[..., taps - 1]
        for m in range(1, taps):
            Rc[:, :, :, :blk - m].addcmul_(R[:, :, :, m:], w[..., taps - 1 - m])
        nxt = F.pad(R[:, :, 1:, :taps - 1], (0, 0, 0, 0, 0, 1))  # first K-1 rows of block b'+1
        spill = R.new_zeros(*R.shape[:3], taps - 1, R.shape[-1])
        for q in range(taps - 1):  # position blk-(K-1)+q reads next-block rows q+m-(K-1) for m >= K-1-q
            for m in range(taps - 1 - q, taps):
                spill[:, :, :, q].addcmul_(nxt[:, :, :, q + m - (taps - 1)], w[..., 0, taps - 1 - m])
        return Rc, spill

    def left_factors(self, mirror: bool) -> torch.Tensor:
        """Row factors ``(B, E, nb, blk, N)`` (mirrored: block order and in-block order reversed)."""
        return self.left.flip((2, 3)) if mirror else self.left

    def write_right(self, dest: torch.Tensor, mirror: bool) -> None:
        """Write the column factors of every row block into ``dest`` ``(B, E, nb, nb, blk, N)``."""
        T, R, spill = self.T, self.R, self.spill
        if mirror:
            T, R = T.flip((2, 3)), R.flip((2, 3))
        torch.mul(T.unsqueeze(4), R.unsqueeze(2), out=dest)
        if spill is not None:
            k1 = self.taps - 1
            T_next = F.pad(self.T[:, :, :, 1:], (0, 0, 0, 1))  # transfer factor of block b'+1
            if mirror:
                dest[:, :, :, :, :k1].addcmul_(T_next.flip((2, 3)).unsqueeze(4), spill.flip((2, 3)).unsqueeze(2))
            else:
                dest[:, :, :, :, self.block - k1:].addcmul_(T_next.unsqueeze(4), spill.unsqueeze(2))

    def add_diagonal(self, out: torch.Tensor, mirror: bool) -> None:
        """Add the diagonal blocks (conv folded in) to ``out`` ``(B, E, Lp, Lp)`` (the padded grid)."""
        bsz, chans, nblk, block, _ = self.shape
        padded, k1 = self.padded, self.taps - 1
        diag = self.diag
        if self.weight is not None:  # the conv of a diagonal block spills K-1 columns to the left (own order)
            w = self.weight.float().view(1, chans, 1, 1, 1, self.taps)
            spread = diag.new_zeros(*diag.shape[:-1], block + k1)
            for m in range(self.taps):
                spread[..., k1 - m:k1 - m + block].addcmul_(diag, w[..., k1 - m])
            diag = spread
        if mirror:
            diag = diag.flip((2, 3, 4))  # spill now to the right
        width = block + k1
        stride = out.stride()
        if k1 == 0:
            out6 = out.view(bsz, chans, nblk, block, nblk, block)
            torch.diagonal(out6, dim1=2, dim2=4).add_(diag.permute(0, 1, 3, 4, 2))
        elif not mirror:  # block b covers columns [b*blk - k1, (b+1)*blk)
            out[:, :, :block, :block] += diag[:, :, 0, :, k1:]
            if nblk > 1:
                out.as_strided((bsz, chans, nblk - 1, block, width),
                               (stride[0], stride[1], block * padded + block, padded, 1),
                               out.storage_offset() + block * padded + block - k1).add_(diag[:, :, 1:])
        else:  # block b covers columns [b*blk, (b+1)*blk + k1)
            last = nblk - 1
            out[:, :, last * block:, last * block:] += diag[:, :, last, :, :block]
            if nblk > 1:
                out.as_strided((bsz, chans, nblk - 1, block, width),
                               (stride[0], stride[1], block * padded + block, padded, 1),
                               out.storage_offset()).add_(diag[:, :, :last])


def _full_matrix(parts_factors: Sequence[Tuple['_BlockFactors', bool]]) -> torch.Tensor:
    """Sum of the full matrices of one or two directions (mirrored ones in original order): ``(B, E, L, L)``.

    Both directions' factors are stacked along n, so one batched matmul writes the whole off-diagonal part.
    """
    first = parts_factors[0][0]
    bsz, chans, nblk, block, nstate = first.shape
    padded = first.padded
    width = nstate * len(parts_factors)
    right = first.left.new_empty(bsz, chans, nblk, nblk, block, width)
    lefts = []
    for k, (fac, mirror) in enumerate(parts_factors):
        fac.write_right(right[..., k * nstate:(k + 1) * nstate], mirror)
        lefts.append(fac.left_factors(mirror))
    left = lefts[0] if len(lefts) == 1 else torch.cat(lefts, dim=-1)
    out = torch.matmul(left, right.view(bsz, chans, nblk, padded, width).transpose(-1, -2))
    del right, left
    out = out.view(bsz, chans, padded, padded)
    for fac, mirror in parts_factors:
        fac.add_diagonal(out, mirror)
    pad = first.pad
    return out[:, :, pad:, pad:] if pad else out


def _default_block(length: int) -> int:
    """About 24 positions per block, spread evenly so that little padding is needed (197 -> 8 blocks of 25)."""
    nblk = max(1, int(round(length / 24)))
    return -(-length // nblk)


def s6_matrix(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, rows: RowsLike = None,
              block: Optional[int] = None) -> torch.Tensor:
    """The S6 (selective scan) matrix alpha of every channel: Ali et al.'s "hidden attention".

    ``alpha[b, c, i, j] = sum_n C[b, n, i] exp(sum_{k=j+1..i} delta[b, c, k] A[c, n]) delta[b, c, j] B[b, n, j]``
    for ``j <= i`` and 0 otherwise, so that the scan output without D and gate is ``y = alpha @ u``.

    Args:
        delta: step sizes after softplus ``(B, E, L)``.
        A: ``(E, N)`` (negative).
        B: ``(B, N, L)``.
        C: ``(B, N, L)``.
        rows: query rows only (int, sequence or tensor; negative counts from the end); None = all.
        block: block size of the full-matrix factorisation (default ~sqrt(L)).

    Returns:
        ``(B, E, L, L)``, or ``(B, E, R, L)`` for R query rows, fp32.
    """
    with torch.no_grad(), torch.autocast(device_type=delta.device.type, enabled=False):
        delta, A, B, C = delta.float(), A.float(), B.float(), C.float()
        length = delta.shape[-1]
        D = _cumsum64(delta)
        dB = delta.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (B, E, L, N)
        Ct = C.transpose(1, 2).unsqueeze(1)  # (B, 1, L, N)
        rows_t = _rows_tensor(rows, length, delta.device)
        if rows_t is not None:
            return _s6_rows(D, A, dB, Ct[:, :, rows_t], rows_t)
        factors = _BlockFactors(D, A, dB, Ct, block or _default_block(length), None, front=True)
        return _full_matrix([(factors, False)]).contiguous()


def conv_matrix(weight: torch.Tensor, length: int) -> torch.Tensor:
    """Causal depthwise conv as banded lower-triangular Toeplitz matrices.

    Args:
        weight: ``(E, K)`` (or the conv module's ``(E, 1, K)``); tap K-1 multiplies the current token.
        length: sequence length L.

    Returns:
        ``(E, L, L)`` with ``M[c, i, i - m] = weight[c, K - 1 - m]`` for m = 0..K-1, so ``conv(x)_c = M_c x_c``.
    """
    weight = weight.reshape(weight.shape[0], -1).float()
    taps = weight.shape[1]
    idx = torch.arange(length, device=weight.device)
    lag = idx[:, None] - idx[None, :]  # i - j
    inside = (lag >= 0) & (lag < taps)
    gathered = weight[:, (taps - 1 - lag).clamp(0, taps - 1)]  # (E, L, L)
    return gathered * inside


def apply_conv_right(mat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mat @ M`` for the conv Toeplitz M of :func:`conv_matrix`, by K shifted adds (no dense matmul).

    ``(mat M)[..., i, j] = sum_m weight[c, K - 1 - m] mat[..., i, j + m]`` (terms with j + m >= L vanish).

    Args:
        mat: ``(..., E, R, L)``.
        weight: ``(E, K)`` or ``(E, 1, K)``.

    Returns:
        ``(..., E, R, L)`` fp32 (new tensor).
    """
    weight = weight.reshape(weight.shape[0], -1).float()
    taps, length = weight.shape[1], mat.shape[-1]
    out = mat * weight[:, taps - 1, None, None]
    for m in range(1, min(taps, length)):
        out[..., :length - m].addcmul_(mat[..., m:], weight[:, taps - 1 - m, None, None])
    return out


# ----------------------------------------------------------------------------------------------------------------
# mixer-level functions
# ----------------------------------------------------------------------------------------------------------------
def scan_internals(mixer: nn.Module, hidden: Optional[torch.Tensor], directions: Sequence[str],
                   internals: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
    """The mixer's :class:`~vim_wsss.models.vim.ScanInputs` per direction, computed or taken from ``internals``.

    Args:
        mixer: a ``BiMambaMixer`` (needs ``branch_inputs(hidden, direction)``).
        hidden: normalised tokens ``(B, L, D)``; may be None when ``internals`` has every direction.
        directions: subset of ('f', 'b').
        internals: recorded ``{'f': ScanInputs, 'b': ScanInputs}`` (e.g. from ``forward_explain``).
    """
    out = {}
    for d in directions:
        if internals is not None and d in internals:
            out[d] = internals[d]
        elif hidden is None:
            raise ValueError(f"need `hidden` or internals[{d!r}] to compute the implicit attention.")
        else:
            out[d] = mixer.branch_inputs(hidden, d)
    return out


def _directions(direction: str) -> Tuple[str, ...]:
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {DIRECTIONS}, got {direction!r}')
    return ('f', 'b') if direction == 'both' else (direction,)


def _check_parts(parts: Sequence[str]) -> Tuple[str, ...]:
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f'unknown implicit-attention parts {unknown}; choose from {PARTS}.')
    return parts


def _chunk_size(channels: int, per_channel: int, channel_chunk: Optional[int]) -> int:
    if channel_chunk is not None:
        if channel_chunk < 1:
            raise ValueError(f'channel_chunk must be >= 1, got {channel_chunk}')
        return min(int(channel_chunk), channels)
    return max(1, min(channels, DEFAULT_CHUNK_ELEMENTS // max(1, per_channel)))


def _direction_terms(ins: object, chans: slice, parts: Tuple[str, ...], scale: float
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Per-direction ingredients for a channel slice: delta, column scale (sigmoid(conv_out)), row scale
    (SiLU(z) * scale) and conv taps (None where the part is switched off)."""
    delta = ins.delta[:, chans].float()
    col_scale = torch.sigmoid(ins.conv_out[:, chans].float()) if 'act' in parts else None  # (B, e, L)
    row_scale = F.silu(ins.z[:, chans].float()) if 'gate' in parts else None  # (B, e, L)
    if scale != 1.0:
        row_scale = torch.full_like(delta, scale) if row_scale is None else row_scale * scale
    weight = ins.conv_weight[chans].float() if 'conv' in parts else None
    return delta, col_scale, row_scale, weight


def _s6_inputs(ins: object, chans: slice, delta: torch.Tensor, col_scale: Optional[torch.Tensor],
               row_scale: Optional[torch.Tensor], rows: Optional[torch.Tensor] = None, cols: Optional[int] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 cumulative steps D ``(B, e, L)``, A ``(e, N)``, column factors dB (delta times col_scale times B)
    ``(B, e, cols, N)`` for the first ``cols`` positions (all by default) and row factors C (times row_scale)
    ``(B, 1 or e, R, N)`` for ``rows`` (all by default)."""
    D = _cumsum64(delta)
    cols = delta.shape[-1] if cols is None else cols
    col = delta[..., :cols] if col_scale is None else delta[..., :cols] * col_scale[..., :cols]
    dB = col.unsqueeze(-1) * ins.B.float()[..., :cols].transpose(1, 2).unsqueeze(1)  # (B, e, cols, N)
    C = ins.C.float().transpose(1, 2).unsqueeze(1)  # (B, 1, L, N)
    if rows is not None:
        C = C[:, :, rows]
    if row_scale is not None:
        C = C * (row_scale if rows is None else row_scale[:, :, rows]).unsqueeze(-1)  # (B, e, R, N)
    return D, ins.A[chans].float(), dB, C


def _identity_chunk(delta: torch.Tensor, rows: Optional[torch.Tensor], col_scale: Optional[torch.Tensor],
                    row_scale: Optional[torch.Tensor], weight: Optional[torch.Tensor]) -> torch.Tensor:
    """``diag(row) . I . diag(col) . M`` rows (parts without 's6'), in the direction's order."""
    bsz, chans_n, length = delta.shape
    query = rows if rows is not None else torch.arange(length, device=delta.device)
    mat = F.one_hot(query, length).to(delta).expand(bsz, chans_n, -1, -1).clone()  # (B, e, R, L)
    if col_scale is not None:
        mat.mul_(col_scale.unsqueeze(2))
    if row_scale is not None:
        mat.mul_(row_scale[:, :, query].unsqueeze(-1))
    return apply_conv_right(mat, weight) if weight is not None else mat


def _direction_rows(ins: object, chans: slice, parts: Tuple[str, ...], rows: torch.Tensor, scale: float
                    ) -> torch.Tensor:
    """``scale * H[rows]`` of one direction, rows and result in that direction's token order: ``(B, e, R, L)``."""
    delta, col_scale, row_scale, weight = _direction_terms(ins, chans, parts, scale)
    if 's6' not in parts:
        return _identity_chunk(delta, rows, col_scale, row_scale, weight)
    D, A, dB, C = _s6_inputs(ins, chans, delta, col_scale, row_scale, rows=rows, cols=int(rows.max()) + 1)
    mat = _s6_rows(D, A, dB, C, rows)
    return apply_conv_right(mat, weight) if weight is not None else mat


def _full_chunk(scans: Mapping[str, object], dirs: Tuple[str, ...], chans: slice, parts: Tuple[str, ...],
                block: int, scale: float) -> torch.Tensor:
    """``scale * sum_d H_d`` (backward mirrored to original order) for a channel slice: ``(B, e, L, L)``."""
    if 's6' not in parts:
        acc = None
        for d in dirs:
            delta, col_scale, row_scale, weight = _direction_terms(scans[d], chans, parts, scale)
            mat = _identity_chunk(delta, None, col_scale, row_scale, weight)
            mat = mat.flip((-2, -1)) if d == 'b' else mat
            acc = mat if acc is None else acc.add_(mat)
        return acc
    factors = []
    for d in dirs:
        delta, col_scale, row_scale, weight = _direction_terms(scans[d], chans, parts, scale)
        D, A, dB, C = _s6_inputs(scans[d], chans, delta, col_scale, row_scale)
        factors.append((_BlockFactors(D, A, dB, C, block, weight, front=d == 'f'), d == 'b'))
    return _full_matrix(factors)


def iter_mamba_attention(mixer: Optional[nn.Module], hidden: Optional[torch.Tensor], *,
                         parts: Sequence[str] = PARTS, rows: RowsLike = None, direction: str = 'both',
                         internals: Optional[Mapping[str, object]] = None, channel_chunk: Optional[int] = None,
                         block: Optional[int] = None) -> Iterator[Tuple[slice, torch.Tensor]]:
    """Yield ``(channel slice, H[:, slice])`` chunk by chunk; see :func:`mamba_attention` for the arguments.

    Lets callers reduce over channels without holding the full ``(B, E, R, L)`` tensor.
    """
    parts = _check_parts(parts)
    dirs = _directions(direction)
    scans = scan_internals(mixer, hidden, dirs, internals)
    first = scans[dirs[0]]
    bsz, chans, length = first.delta.shape
    rows_t = _rows_tensor(rows, length, first.delta.device)
    blk = block or _default_block(length)
    nstate = first.A.shape[-1]
    if rows_t is None:
        padded = -(-length // blk) * blk  # output + stacked column factors + diagonal-block temporaries
        per_channel = bsz * (2 * padded * padded + 2 * len(dirs) * padded * padded * nstate // blk
                             + padded * blk * nstate)
    else:
        per_channel = bsz * len(rows_t) * length * (3 * nstate + 4)
    step = _chunk_size(chans, per_channel, channel_chunk)
    for start in range(0, chans, step):
        sl = slice(start, min(start + step, chans))
        yield sl, _combined_chunk(scans, dirs, sl, parts, rows_t, blk)  # no grad-mode context held across yield


def _combined_chunk(scans: Mapping[str, object], dirs: Tuple[str, ...], sl: slice, parts: Tuple[str, ...],
                    rows_t: Optional[torch.Tensor], blk: int) -> torch.Tensor:
    """Directions combined for one channel slice, ``(B, e, R|L, L)``, in original token order."""
    first = scans[dirs[0]]
    length = first.delta.shape[-1]
    scale = 1.0 / len(dirs)
    with torch.no_grad(), torch.autocast(device_type=first.delta.device.type, enabled=False):
        if rows_t is None:
            return _full_chunk(scans, dirs, sl, parts, blk, scale)
        acc = None
        for d in dirs:
            mat = _direction_rows(scans[d], sl, parts, rows_t if d == 'f' else length - 1 - rows_t, scale)
            mat = mat.flip(-1) if d == 'b' else mat
            acc = mat if acc is None else acc.add_(mat)
    return acc


def mamba_attention(mixer: Optional[nn.Module], hidden: Optional[torch.Tensor], *,
                    parts: Sequence[str] = PARTS, rows: RowsLike = None, direction: str = 'both',
                    internals: Optional[Mapping[str, object]] = None, channel_chunk: Optional[int] = None,
                    block: Optional[int] = None) -> torch.Tensor:
    """Implicit attention matrices of a bidirectional Mamba mixer, one per inner channel.

    Defined on ``x = in_proj(hidden)[:, :E]`` (channels first, before the conv):
    ``H_c = diag(SiLU z_c) . alpha_c . diag(sigmoid conv_out_c) . M_c`` per direction, so that with the conv bias
    and D zeroed ``out_proj(einsum('beij,bej->bei', H, x).transpose(1, 2))`` is the mixer output (in general add
    :func:`mamba_affine_remainder`).

    Args:
        mixer: ``BiMambaMixer`` (used only when ``internals`` lacks a needed direction).
        hidden: normalised tokens entering the mixer ``(B, L, D)``; may be None when ``internals`` is given.
        parts: sub-components to include; a missing one is replaced by the identity. ``('s6',)`` is Ali et al.'s
            S6-only alpha; the default is the full unified operator.
        rows: query rows (original token order), e.g. the class token index: computed directly, without the full
            matrices. None = all rows.
        direction: 'f', 'b' (returned in original token order, i.e. ``J H_b J``) or 'both' = ``(H_f + J H_b J) / 2``.
        internals: recorded ``{'f': ScanInputs, 'b': ScanInputs}`` of this mixer for this input (skips recomputing).
        channel_chunk: channels processed at once (bounds the temporaries); default from a ~256 MB budget.
        block: block size of the full-matrix factorisation (default ~sqrt(L)).

    Returns:
        ``(B, E, R, L)`` fp32 with R = L or ``len(rows)``.
    """
    scans = scan_internals(mixer, hidden, _directions(direction), internals)
    out = None
    for sl, chunk in iter_mamba_attention(mixer, hidden, parts=parts, rows=rows, direction=direction,
                                          internals=scans, channel_chunk=channel_chunk, block=block):
        if out is None:
            chans = next(iter(scans.values())).delta.shape[1]
            out = chunk.new_empty(chunk.shape[0], chans, *chunk.shape[2:])
        out[:, sl] = chunk
    return out


#: Implementations of the channel means of the full implicit attention (ViM ``transformer_attr``, the affinity).
ATTENTION_IMPLS = ('auto', 'torch', 'numba')


def resolve_attention_impl(impl: str, device: torch.device, supported: bool = True) -> str:
    """'numba' (the compiled CPU kernel of :mod:`vim_wsss.explain.gradcam_numba`) or 'torch' (full matrices, the
    reference) for a channel mean of the full implicit attention; ``supported``: the kernel covers the options.
    'auto' picks numba for CPU tensors when numba imports and the options are supported."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == 'numba' and device.type != 'cpu':
        raise ValueError("impl 'numba' runs on CPU tensors; use 'auto' or 'torch' on CUDA.")
    if impl == 'numba' and not supported:
        raise ValueError("impl 'numba' computes full bidirectional matrices with every part, mode 'relu' or 'abs'; "
                         "use impl 'torch' for the other options.")
    if impl == 'auto':
        return 'numba' if device.type == 'cpu' and supported and numba_available() else 'torch'
    return impl


def attention_channel_mean(mixer: Optional[nn.Module], hidden: Optional[torch.Tensor], *, mode: str = 'relu',
                           parts: Sequence[str] = PARTS, rows: RowsLike = None, direction: str = 'both',
                           internals: Optional[Mapping[str, object]] = None,
                           channel_chunk: Optional[int] = None, impl: str = 'auto') -> torch.Tensor:
    """Channel-aggregated implicit attention ``mean_c f(H_c)`` without holding all channels at once.

    Args:
        mode: 'relu' = mean over channels of ``max(H_c, 0)`` (the paper's vision aggregation), 'abs' = mean of
            ``|H_c|``, 'mean' = plain mean.
        impl: 'torch' (chunks of full matrices), 'numba' (the compiled CPU kernel of
            :mod:`vim_wsss.explain.gradcam_numba`: full bidirectional matrices with every part, 'relu' / 'abs') or
            'auto' (numba where it applies).
        Others: as :func:`mamba_attention`.

    Returns:
        ``(B, R, L)`` fp32.
    """
    if mode not in ('relu', 'abs', 'mean'):
        raise ValueError(f"mode must be 'relu', 'abs' or 'mean', got {mode!r}")
    first = internals.get('f') if internals is not None else None
    device = first.delta.device if first is not None else getattr(hidden, 'device', torch.device('cpu'))
    supported = mode in ('relu', 'abs') and set(parts) == set(PARTS) and rows is None and direction == 'both'
    if resolve_attention_impl(impl, device, supported) == 'numba':
        from .gradcam_numba import relu_channel_mean_numba
        return relu_channel_mean_numba(scan_internals(mixer, hidden, ('f', 'b'), internals), mode)
    total, count = None, 0
    for sl, chunk in iter_mamba_attention(mixer, hidden, parts=parts, rows=rows, direction=direction,
                                          internals=internals, channel_chunk=channel_chunk):
        if mode == 'relu':
            chunk.clamp_(min=0)
        elif mode == 'abs':
            chunk.abs_()
        part = chunk.sum(dim=1)
        total = part if total is None else total.add_(part)
        count += sl.stop - sl.start
    return total / count


def mamba_affine_remainder(mixer: Optional[nn.Module], hidden: Optional[torch.Tensor], *, direction: str = 'both',
                           internals: Optional[Mapping[str, object]] = None) -> torch.Tensor:
    """The part of the mixer's inner output that is not ``H x``: the D-skip and the conv-bias terms.

    Per direction ``r = SiLU(z) * (alpha (sigmoid(conv_out) * b_conv) + D * u)``, so that
    ``y_d = H_d x + r_d`` exactly (``y_d`` the gated scan output before ``out_proj``).

    Args:
        mixer, hidden, internals: as :func:`mamba_attention`.
        direction: 'f', 'b' (original token order) or 'both' (averaged like the mixer output).

    Returns:
        ``(B, E, L)`` fp32; the mixer output is ``out_proj((einsum(H, x) + r).transpose(1, 2))``.
    """
    from vim_wsss.ops import selective_scan

    dirs = _directions(direction)
    scans = scan_internals(mixer, hidden, dirs, internals)
    total = None
    for d in dirs:
        ins = scans[d]
        with torch.autocast(device_type=ins.delta.device.type, enabled=False):
            gate = F.silu(ins.z.float())
            bias_in = torch.sigmoid(ins.conv_out.float()) * ins.conv_bias.float()[None, :, None]
            bias_part = selective_scan(bias_in, ins.delta.float(), ins.A.float(), ins.B.float(), ins.C.float(),
                                       D=None, z=ins.z.float())
            rem = bias_part.float() + ins.D.float()[None, :, None] * ins.u.float() * gate
        if d == 'b':
            rem = rem.flip(-1)
        total = rem if total is None else total + rem
    return total / len(dirs)


def ali_s6_rows(scans: Mapping[str, object], query: int, index_bug: bool = False) -> torch.Tensor:
    """Ali et al.'s ("The Hidden Attention of Mamba Models") bidirectional S6 attention row of one query token.

    As ``compute_middle_attn_vector`` + the merge in HiddenMambaAttn's ``mamba_simple.py``: the forward S6 row gives
    the columns ``<= query``, the (flipped) backward S6 row the columns ``> query``; no gate, conv or SiLU.

    Args:
        scans: ``{'f': ScanInputs, 'b': ScanInputs}``.
        query: query token index p (original order), e.g. the class token.
        index_bug: reproduce the original off-by-one: ``C_p exp(S_{p-1} - S_t) delta_t B_t`` for t < p and a zero at
            column p (default False: the correct ``C_p exp(S_p - S_t) delta_t B_t`` for t <= p).

    Returns:
        ``(B, E, L)`` fp32.
    """
    rows = []
    for d in ('f', 'b'):
        ins = scans[d]
        with torch.no_grad(), torch.autocast(device_type=ins.delta.device.type, enabled=False):
            delta = ins.delta.float()
            length = delta.shape[-1]
            p = query if d == 'f' else length - 1 - query
            D, A = _cumsum64(delta), ins.A.float()
            dB = delta.unsqueeze(-1) * ins.B.float().transpose(1, 2).unsqueeze(1)
            C_p = ins.C.float().transpose(1, 2).unsqueeze(1)[:, :, [p]]  # (B, 1, 1, N)
            if index_bug:
                if p == 0:
                    row = delta.new_zeros(delta.shape)
                else:
                    row = _s6_rows(D, A, dB, C_p, torch.tensor([p - 1], device=delta.device))[:, :, 0]
            else:
                row = _s6_rows(D, A, dB, C_p, torch.tensor([p], device=delta.device))[:, :, 0]
        rows.append(row if d == 'f' else row.flip(-1))
    merged = rows[0].clone()
    merged[..., query + 1:] = rows[1][..., query + 1:]
    return merged
