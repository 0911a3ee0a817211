"""Implicit attention of the ViM mixer: exactness against naive loops and against the mixer's own output."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vim_wsss.explain.implicit_attention import (
    ali_s6_rows, apply_conv_right, attention_channel_mean, conv_matrix, iter_mamba_attention, mamba_affine_remainder,
    mamba_attention, s6_matrix,
)
from vim_wsss.models.vim import BiMambaMixer


# ----------------------------------------------------------------------------------------------------------------
# independent references (loops, products of exp(delta A) instead of log-space sums, float64)
# ----------------------------------------------------------------------------------------------------------------
def naive_s6(delta, A, B, C):
    """Triple loop: alpha[b, c, i, j] = sum_n C_i[n] prod_{k=j+1..i} exp(delta_k A[c, n]) delta_j B_j[n]."""
    delta, A, B, C = delta.double(), A.double(), B.double(), C.double()
    bsz, chans, length = delta.shape
    out = torch.zeros(bsz, chans, length, length, dtype=torch.float64)
    for i in range(length):
        for j in range(i + 1):
            prod = torch.ones(bsz, chans, A.shape[1], dtype=torch.float64)
            for k in range(j + 1, i + 1):
                prod = prod * torch.exp(delta[:, :, k, None] * A)
            out[:, :, i, j] = (C[:, None, :, i] * prod * delta[:, :, j, None] * B[:, None, :, j]).sum(-1)
    return out


def naive_conv_matrix(weight, length):
    chans, taps = weight.shape
    mat = torch.zeros(chans, length, length, dtype=torch.float64)
    for c in range(chans):
        for i in range(length):
            for m in range(taps):
                if i - m >= 0:
                    mat[c, i, i - m] = weight[c, taps - 1 - m]
    return mat


def random_scan(bsz, chans, length, nstate, seed, delta_shift=-1.0):
    g = torch.Generator().manual_seed(seed)
    delta = F.softplus(torch.randn(bsz, chans, length, generator=g) + delta_shift)
    A = -torch.exp(torch.randn(chans, nstate, generator=g))
    B = torch.randn(bsz, nstate, length, generator=g)
    C = torch.randn(bsz, nstate, length, generator=g)
    return delta, A, B, C


def random_mixer(d_model, d_state, d_conv, seed, zero_affine=False):
    torch.manual_seed(seed)
    mixer = BiMambaMixer(d_model, d_state=d_state, d_conv=d_conv).eval()
    with torch.no_grad():
        for name in ('A_log', 'A_b_log'):
            getattr(mixer, name).add_(0.3 * torch.randn_like(getattr(mixer, name)))
        for proj in (mixer.dt_proj, mixer.dt_proj_b):
            proj.bias.add_(0.5 * torch.randn_like(proj.bias))
        for conv in (mixer.conv1d, mixer.conv1d_b):
            conv.bias.copy_(torch.zeros_like(conv.bias) if zero_affine else 0.5 * torch.randn_like(conv.bias))
        for name in ('D', 'D_b'):
            getattr(mixer, name).copy_(torch.zeros(mixer.d_inner) if zero_affine else torch.randn(mixer.d_inner))
    return mixer


def inner_x(mixer, hidden):
    return mixer.in_proj(hidden)[..., :mixer.d_inner].transpose(1, 2).float()


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('length,block', [(9, 4), (13, 8), (5, 8), (16, 4)])
def test_s6_matrix_matches_triple_loop(length, block):
    delta, A, B, C = random_scan(2, 3, length, 4, seed=length)
    ref = naive_s6(delta, A, B, C)
    full = s6_matrix(delta, A, B, C, block=block)
    assert full.dtype == torch.float32 and full.shape == (2, 3, length, length)
    torch.testing.assert_close(full.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    rows = [0, length // 2, length - 1]
    torch.testing.assert_close(s6_matrix(delta, A, B, C, rows=rows).double(), ref[:, :, rows],
                               rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert torch.equal(full.triu(1), torch.zeros_like(full))


def test_s6_matrix_no_overflow_long_sequence():
    """Large steps and strongly negative A: S spans thousands; no inf/nan, rows == full rows == float64 direct."""
    delta, A, B, C = random_scan(1, 4, 300, 16, seed=3, delta_shift=2.0)
    A = -torch.arange(1, 17, dtype=torch.float32).repeat(4, 1)
    full = s6_matrix(delta, A, B, C)
    assert torch.isfinite(full).all()
    rows = [0, 57, 150, 299]
    S = torch.cumsum(delta.double()[..., None] * A.double()[None, :, None], dim=2)  # (B, E, L, N)
    for r in rows:
        expo = S[:, :, r:r + 1] - S[:, :, :r + 1]  # (B, E, r+1, N) <= 0
        ref = (C.double()[:, None, :, r, None].transpose(-1, -2) * torch.exp(expo)
               * delta.double()[:, :, :r + 1, None] * B.double()[:, None].transpose(-1, -2)[:, :, :r + 1]).sum(-1)
        torch.testing.assert_close(full[:, :, r, :r + 1].double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s6_matrix(delta, A, B, C, rows=rows), full[:, :, rows], rtol=1e-5, atol=1e-6)


def test_fast_and_direct_diagonal_blocks_agree(monkeypatch):
    """Diagonal blocks: rank-N product (small decay range) vs direct masked exp; both paths, same result."""
    from vim_wsss.explain import implicit_attention as ia

    delta, A, B, C = random_scan(2, 6, 40, 8, seed=7, delta_shift=-1.0)
    A = -torch.linspace(0.5, 12, 8).repeat(6, 1)
    mixed = s6_matrix(delta, A, B, C, block=10)  # some blocks fast, some direct (range up to ~100 nats)
    span = (torch.cumsum(delta, -1)[..., 9::10] - torch.cumsum(delta, -1)[..., 0::10]) * 12
    assert (span > ia.FAST_DIAG_RANGE).any() and (span < ia.FAST_DIAG_RANGE).any()
    monkeypatch.setattr(ia, 'FAST_DIAG_RANGE', -1.0)
    direct = s6_matrix(delta, A, B, C, block=10)
    torch.testing.assert_close(mixed, direct, rtol=2e-5, atol=1e-6 * direct.abs().max().item())
    ref = naive_s6(delta[:1, :2], A[:2], B[:1], C[:1])
    torch.testing.assert_close(mixed[:1, :2].double(), ref, rtol=2e-5, atol=1e-6 * ref.abs().max().item())


def test_conv_matrix_and_shift_product():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=g)
    ref = naive_conv_matrix(weight, 7)
    torch.testing.assert_close(conv_matrix(weight, 7).double(), ref)
    torch.testing.assert_close(conv_matrix(weight[:, None], 7), conv_matrix(weight, 7))  # (E, 1, K) accepted
    x = torch.randn(2, 3, 7, generator=g)
    conv = F.conv1d(x, weight[:, None], padding=3, groups=3)[..., :7]
    torch.testing.assert_close(torch.einsum('cij,bcj->bci', conv_matrix(weight, 7), x), conv)
    mat = torch.randn(2, 3, 5, 7, generator=g)
    torch.testing.assert_close(apply_conv_right(mat, weight), mat @ conv_matrix(weight, 7), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# identities with the mixer output
# ----------------------------------------------------------------------------------------------------------------
MIXERS = [(8, 4, 4, 11), (16, 8, 2, 23), (24, 16, 4, 37)]  # (d_model, d_state, d_conv, L)


@pytest.mark.parametrize('d_model,d_state,d_conv,length', MIXERS)
def test_identity_without_affine_terms(d_model, d_state, d_conv, length):
    mixer = random_mixer(d_model, d_state, d_conv, seed=d_model, zero_affine=True)
    hidden = torch.randn(3, length, d_model)
    with torch.no_grad():
        out = mixer(hidden)
        x = inner_x(mixer, hidden)
        H = mamba_attention(mixer, hidden)
        assert H.shape == (3, mixer.d_inner, length, length)
        rebuilt = mixer.out_proj(torch.einsum('beij,bej->bei', H, x).transpose(1, 2))
        torch.testing.assert_close(rebuilt, out, rtol=1e-4, atol=1e-5 * out.abs().max().item())
        assert mamba_affine_remainder(mixer, hidden).abs().max() < 1e-6


@pytest.mark.parametrize('d_model,d_state,d_conv,length', MIXERS)
@pytest.mark.parametrize('direction', ['f', 'b', 'both'])
@pytest.mark.parametrize('block', [None, 4])
def test_identity_with_affine_remainder(d_model, d_state, d_conv, length, direction, block):
    mixer = random_mixer(d_model, d_state, d_conv, seed=100 + d_model)
    hidden = torch.randn(2, length, d_model)
    with torch.no_grad():
        x = inner_x(mixer, hidden)
        H = mamba_attention(mixer, hidden, direction=direction, block=block)
        rem = mamba_affine_remainder(mixer, hidden, direction=direction)
        assert rem.abs().max() > 1e-3  # the affine terms are really there
        inner = torch.einsum('beij,bej->bei', H, x) + rem
        if direction == 'both':
            out = mixer(hidden)
            got = mixer.out_proj(inner.transpose(1, 2))
        else:
            scan = mixer.scan(mixer.branch_inputs(hidden, direction))
            out = scan if direction == 'f' else scan.flip(-1)
            got = inner
        torch.testing.assert_close(got, out, rtol=1e-4, atol=1e-5 * out.abs().max().item())


def test_rows_equal_full_rows_and_chunking_invariance():
    mixer = random_mixer(16, 8, 4, seed=5)
    hidden = torch.randn(2, 21, 16)
    full = mamba_attention(mixer, hidden)
    for rows in ([10], [0, 20, 7], [-1]):
        got = mamba_attention(mixer, hidden, rows=rows, channel_chunk=5)
        idx = [r % 21 for r in rows]
        torch.testing.assert_close(got, full[:, :, idx], rtol=1e-5, atol=1e-6)
    for chunk in (1, 7, 32):
        torch.testing.assert_close(mamba_attention(mixer, hidden, channel_chunk=chunk), full, rtol=1e-6,
                                   atol=1e-7 * full.abs().max().item())  # only BLAS batching differs
    for direction in ('f', 'b'):
        one = mamba_attention(mixer, hidden, direction=direction)
        torch.testing.assert_close(mamba_attention(mixer, hidden, direction=direction, rows=[3, 15]),
                                   one[:, :, [3, 15]], rtol=1e-5, atol=1e-6)


def test_recorded_internals_are_used():
    mixer = random_mixer(8, 4, 4, seed=9)
    hidden = torch.randn(2, 11, 8)
    with torch.no_grad():
        _, internals = mixer(hidden, return_internals=True)
    torch.testing.assert_close(mamba_attention(None, None, internals=internals), mamba_attention(mixer, hidden))
    with pytest.raises(ValueError, match='hidden'):
        mamba_attention(None, None, internals={'f': internals['f']})


def test_parts_ablations_match_dense_construction():
    mixer = random_mixer(8, 4, 4, seed=12)
    hidden = torch.randn(2, 9, 8)
    with torch.no_grad():
        ins = mixer.branch_inputs(hidden, 'f')
        insb = mixer.branch_inputs(hidden, 'b')
    alpha = naive_s6(ins.delta, ins.A, ins.B, ins.C)
    gate = F.silu(ins.z.double())
    sig = torch.sigmoid(ins.conv_out.double())
    conv = naive_conv_matrix(ins.conv_weight.double(), 9)
    eye = torch.eye(9, dtype=torch.float64)
    s6_only = mamba_attention(mixer, hidden, parts=('s6',), direction='f')
    torch.testing.assert_close(s6_only.double(), alpha, rtol=1e-5, atol=1e-6)
    no_s6 = mamba_attention(mixer, hidden, parts=('conv', 'act', 'gate'), direction='f')
    torch.testing.assert_close(no_s6.double(), gate[..., None] * (eye * sig[:, :, None, :]) @ conv, rtol=1e-5,
                               atol=1e-6)
    no_gate = mamba_attention(mixer, hidden, parts=('s6', 'conv', 'act'), direction='f')
    torch.testing.assert_close(no_gate.double(), (alpha * sig[:, :, None, :]) @ conv, rtol=1e-5, atol=1e-6)
    alpha_b = naive_s6(insb.delta, insb.A, insb.B, insb.C)
    both = mamba_attention(mixer, hidden, parts=('s6',), direction='both')
    torch.testing.assert_close(both.double(), (alpha + alpha_b.flip(-1).flip(-2)) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='unknown'):
        mamba_attention(mixer, hidden, parts=('s6', 'norm'))


def test_channel_mean_aggregation_and_grad_mode():
    mixer = random_mixer(8, 4, 4, seed=21)
    hidden = torch.randn(2, 13, 8)
    full = mamba_attention(mixer, hidden)
    assert torch.is_grad_enabled()
    for _ in iter_mamba_attention(mixer, hidden, channel_chunk=3):
        assert torch.is_grad_enabled()  # the generator does not leak no_grad into the caller
    torch.testing.assert_close(attention_channel_mean(mixer, hidden, channel_chunk=5), full.clamp(min=0).mean(1))
    torch.testing.assert_close(attention_channel_mean(mixer, hidden, mode='abs', rows=[6]),
                               full[:, :, [6]].abs().mean(1))


def test_autocast_gives_fp32_and_same_values():
    mixer = random_mixer(8, 4, 4, seed=31)
    hidden = torch.randn(2, 11, 8)
    with torch.no_grad():
        _, internals = mixer(hidden, return_internals=True)
    ref = mamba_attention(None, None, internals=internals, rows=[5])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = mamba_attention(None, None, internals=internals, rows=[5])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


# ----------------------------------------------------------------------------------------------------------------
# Ali et al. rows (HiddenMambaAttn's compute_middle_attn_vector + merge), reproduced with loops
# ----------------------------------------------------------------------------------------------------------------
def ali_reference(ins, cls_pos, bug):
    delta, A, B, C = ins.delta.double(), ins.A.double(), ins.B.double(), ins.C.double()
    bsz, chans, length = delta.shape
    dA = torch.exp(torch.einsum('bdl,dn->bldn', delta, A))
    dB = torch.einsum('bdl,bnl->bldn', delta, B)
    vec = torch.zeros(bsz, chans, length, dtype=torch.float64)
    last = cls_pos if bug else cls_pos + 1
    for t in range(last):
        prod = torch.ones(bsz, chans, A.shape[1], dtype=torch.float64)
        top = cls_pos - 1 if bug else cls_pos
        for k in range(t + 1, top + 1):
            prod = prod * dA[:, k]
        vec[:, :, t] = (C[:, None, :, cls_pos] * prod * dB[:, t]).sum(-1)
    return vec


@pytest.mark.parametrize('bug', [False, True])
@pytest.mark.parametrize('length,cls', [(11, 5), (10, 4)])
def test_ali_rows_match_loops(bug, length, cls):
    mixer = random_mixer(8, 4, 4, seed=41)
    hidden = torch.randn(2, length, 8)
    with torch.no_grad():
        _, internals = mixer(hidden, return_internals=True)
    fwd = ali_reference(internals['f'], cls, bug)
    bwd = ali_reference(internals['b'], length - 1 - cls, bug).flip(-1)
    ref = fwd.clone()
    ref[..., cls + 1:] = bwd[..., cls + 1:]
    got = ali_s6_rows(internals, cls, index_bug=bug)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    if not bug:  # the correct forward part is the S6-only row of the forward direction
        s6_row = mamba_attention(None, None, internals=internals, parts=('s6',), direction='f', rows=[cls])[:, :, 0]
        torch.testing.assert_close(got[..., :cls + 1], s6_row[..., :cls + 1], rtol=1e-5, atol=1e-6)
    assert not math.isclose(float((got - ali_s6_rows(internals, cls, index_bug=not bug)).abs().max()), 0.0)
