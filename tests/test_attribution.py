"""Relevance maps: ViM 'ours' / 'transformer_attr' / Ali et al. methods and DeiT methods against independent
step-by-step versions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vim_wsss.explain.attribution import METHODS, default_start_layer, relevance_maps
from vim_wsss.models import create_model

NUM_CLASSES = 5


@pytest.fixture(scope='module')
def vim():
    torch.manual_seed(0)
    model = create_model('vim_test_patch8_64', num_classes=NUM_CLASSES).eval()
    with torch.no_grad():  # non-trivial mixers: random conv bias / D / steps
        for layer in model.layers:
            mixer = layer.mixer
            for conv in (mixer.conv1d, mixer.conv1d_b):
                conv.bias.normal_(0, 0.5)
            for proj in (mixer.dt_proj, mixer.dt_proj_b):
                proj.bias.add_(torch.randn_like(proj.bias) * 0.5)
        model.head.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope='module')
def deit():
    torch.manual_seed(1)
    model = create_model('deit_test_patch8_64', num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
    return model


def images(n, seed):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# independent ViM reference: naive full H (products of exp(delta A), dense conv matrix), loops, batch 1
# ----------------------------------------------------------------------------------------------------------------
def naive_alpha(ins):
    delta, A = ins.delta.double()[0], ins.A.double()  # (E, L), (E, N)
    B, C = ins.B.double()[0], ins.C.double()[0]  # (N, L)
    chans, length = delta.shape
    dA = torch.exp(delta.T[:, :, None] * A[None])  # (L, E, N)
    dB = delta.T[:, :, None] * B.T[:, None, :]  # (L, E, N)
    alpha = torch.zeros(chans, length, length, dtype=torch.float64)
    for i in range(length):
        prods = torch.ones(i + 1, chans, A.shape[1], dtype=torch.float64)
        if i > 0:  # prods[j] = prod_{k=j+1..i} dA_k
            prods[:i] = torch.flip(torch.cumprod(torch.flip(dA[1:i + 1], [0]), 0), [0])
        alpha[:, i, :i + 1] = torch.einsum('jen,jen,n->ej', prods, dB[:i + 1], C[:, i])
    return alpha


def naive_H(ins):
    alpha = naive_alpha(ins)
    chans, length = alpha.shape[:2]
    weight = ins.conv_weight.double()
    taps = weight.shape[1]
    conv = torch.zeros(chans, length, length, dtype=torch.float64)
    for m in range(taps):
        idx = torch.arange(m, length)
        conv[:, idx, idx - m] = weight[:, taps - 1 - m, None]
    gate = F.silu(ins.z.double()[0])
    sig = torch.sigmoid(ins.conv_out.double()[0])
    return gate[:, :, None] * torch.bmm(alpha * sig[:, None, :], conv)


def reference_rollout(vectors, start_layer):
    """compute_rollout_attention of the reference code, fed (1, L) vectors (the broadcasting quirk)."""
    length = vectors[0].shape[1]
    eye = torch.eye(length, dtype=vectors[0].dtype).expand(1, length, length)
    mats = [v + eye for v in vectors]
    mats = [m / m.sum(dim=-1, keepdim=True) for m in mats]
    joint = mats[start_layer]
    for i in range(start_layer + 1, len(mats)):
        joint = mats[i].bmm(joint)
    return joint


def to_map(patch_rel, grid, size):
    """The reference clamps the patch relevance, then upsamples (scale_factor = patch stride), then min-max."""
    rel = F.interpolate(patch_rel.float().clamp(min=0).reshape(1, 1, *grid), scale_factor=size[0] // grid[0],
                        mode='bilinear')[0, 0]
    return (rel - rel.min()) / (rel.max() - rel.min())


def assert_matches_reference(got, x, classes, reference):
    """Every map ``got[b, k]`` against ``reference(x[b:b + 1], classes[b, k])`` (one image, one class)."""
    for b in range(x.shape[0]):
        for k in range(classes.shape[1]):
            torch.testing.assert_close(got[b, k], reference(x[b:b + 1], int(classes[b, k])), rtol=1e-4, atol=1e-4)


def ours_reference(model, image, target, start_layer):
    """implicit-attention.md section 2.3, steps 1-5, one image, one class."""
    out = model.forward_explain(image)
    grads = torch.autograd.grad(out['logits'][0, target], out['residuals'])
    cls = model.cls_index
    length = out['residuals'][0].shape[1]
    vectors = []
    for layer in range(len(model.layers)):
        h_f = naive_H(out['internals'][layer]['f'])
        h_b = naive_H(out['internals'][layer]['b'])
        attn_vec = h_f[:, cls, :] + h_b[:, length - 1 - cls, :].flip(-1)  # a + flip(b): (E, L)
        avg = attn_vec.clamp(min=0).sum(0) / attn_vec.shape[0]
        s = grads[layer][0].double().clamp(min=0).max(dim=1)[0]
        s = (s - s.min()) / (s.max() - s.min())
        m = avg * s
        vectors.append(((m - m.min()) / (m.max() - m.min()))[None])
    joint = reference_rollout(vectors, start_layer)
    p = joint[0, cls]
    p = torch.cat([p[:cls], p[cls + 1:]]).clamp(min=0)
    return to_map(p, model.grid_size, tuple(image.shape[-2:]))


@pytest.mark.parametrize('start_layer', [None, 0])
def test_vim_ours_matches_step_by_step_reference(vim, start_layer):
    x = images(2, seed=3)
    classes = torch.tensor([[1, 3], [4, 0]])
    got = relevance_maps(vim, x, classes, 'ours', start_layer=start_layer)
    assert got.shape == (2, 2, 64, 64) and got.dtype == torch.float32
    start = default_start_layer('vim', 'ours', len(vim.layers)) if start_layer is None else start_layer
    assert_matches_reference(got, x, classes, lambda image, target: ours_reference(vim, image, target, start))


def transformer_attr_reference(model, image, target, start_layer):
    """The paper's R = prod (I + E_c[(grad H_c * H_c)^+]) with naive float64 matrices, one image, one class; the
    gradient w.r.t. H_c[i, j] is (d logit / d mixer output) out_proj.weight at [i, c] times x_c[j]."""
    mixer_out = []
    hooks = [layer.mixer.register_forward_hook(lambda _m, _i, o: mixer_out.append(o[0])) for layer in model.layers]
    try:
        out = model.forward_explain(image)
    finally:
        for hook in hooks:
            hook.remove()
    grads = torch.autograd.grad(out['logits'][0, target], mixer_out[start_layer:])
    length = out['residuals'][0].shape[1]
    joint = torch.eye(length, dtype=torch.float64)
    for layer, grad in zip(range(start_layer, len(model.layers)), grads):
        ins = out['internals'][layer]
        h = (naive_H(ins['f']) + naive_H(ins['b']).flip(-1, -2)) / 2  # (E, L, L), original token order
        grad_y = grad[0].double() @ model.layers[layer].mixer.out_proj.weight.double()  # (L, E)
        grad_h = grad_y.T[:, :, None] * ins['f'].x.double()[0][:, None, :]
        cam = (grad_h * h).clamp(min=0).mean(0)
        joint = joint + cam @ joint
    cls = model.cls_index
    p = torch.cat([joint[cls, :cls], joint[cls, cls + 1:]])
    return to_map(p, model.grid_size, tuple(image.shape[-2:]))


@pytest.mark.parametrize('start_layer', [None, 1])
def test_vim_transformer_attr_matches_naive_reference(vim, start_layer):
    x = images(2, seed=4)
    classes = torch.tensor([[1, 3], [4, 0]])
    got = relevance_maps(vim, x, classes, 'transformer_attr', start_layer=start_layer)
    assert got.shape == (2, 2, 64, 64) and got.dtype == torch.float32
    assert_matches_reference(got, x, classes,
                             lambda image, target: transformer_attr_reference(vim, image, target, start_layer or 0))
    chunked = relevance_maps(vim, x, classes, 'transformer_attr', start_layer=start_layer, channel_chunk=5)
    torch.testing.assert_close(chunked, got, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# independent Ali et al. reference (loops, their index handling, merge and normalisation)
# ----------------------------------------------------------------------------------------------------------------
def ali_vector(ins, cls_pos, bug):
    delta, A = ins.delta.double()[0], ins.A.double()
    B, C = ins.B.double()[0], ins.C.double()[0]
    dA = torch.exp(delta.T[:, :, None] * A[None])  # (L, E, N)
    dB = delta.T[:, :, None] * B.T[:, None, :]
    vec = torch.zeros(delta.shape, dtype=torch.float64)
    top = cls_pos - 1 if bug else cls_pos
    for t in range(top + 1):
        prod = torch.ones(A.shape, dtype=torch.float64)
        for k in range(t + 1, top + 1):
            prod = prod * dA[k]
        vec[:, t] = (C[None, :, cls_pos] * prod * dB[t]).sum(-1)
    return vec


def ali_xai(out, layer, cls, length, bug):
    fwd = ali_vector(out['internals'][layer]['f'], cls, bug)
    bwd = ali_vector(out['internals'][layer]['b'], length - 1 - cls, bug).flip(-1)
    fwd[:, cls + 1:] = bwd[:, cls + 1:]
    return fwd[None]  # (1, E, L)


def ali_reference(model, image, target, method, start_layer, bug):
    out = model.forward_explain(image)
    cls, length = model.cls_index, out['residuals'][0].shape[1]
    xais = [ali_xai(out, layer, cls, length, bug) for layer in range(len(model.layers))]
    if method == 'raw_attention':
        layers = []
        for xai in xais:
            heads = (xai - xai.min()) / (xai.max() - xai.min())
            layers.append(heads.sum(dim=1) / heads.shape[1])
        p = torch.cat(layers[start_layer:], dim=0).mean(dim=0)
    elif method == 'rollout':
        p = reference_rollout([x.sum(dim=1) / x.shape[1] for x in xais], start_layer)[0, cls]
    else:  # mamba_attr
        grads = torch.autograd.grad(out['logits'][0, target], out['residuals'])
        layers = []
        for xai, grad in zip(xais, grads):
            heads = xai.clamp(min=0)
            s = grad[0].double().clamp(min=0).max(dim=1)[0][None]
            s = (s - s.min()) / (s.max() - s.min())
            heads = (heads - heads.min()) / (heads.max() - heads.min())
            layers.append(heads.sum(dim=1) / heads.shape[1] * s)
        p = reference_rollout(layers, start_layer)[0, cls]
    p = torch.cat([p[:cls], p[cls + 1:]]).clamp(min=0)
    return to_map(p, model.grid_size, tuple(image.shape[-2:]))


@pytest.mark.parametrize('method', ['mamba_attr', 'raw_attention', 'rollout'])
@pytest.mark.parametrize('bug', [False, True])
def test_vim_ali_methods_match_reference(vim, method, bug):
    x = images(2, seed=5)
    classes = torch.tensor([[2], [1]])
    got = relevance_maps(vim, x, classes, method, start_layer=0, ali_index_bug=bug)
    for b in range(2):
        ref = ali_reference(vim, x[b:b + 1], int(classes[b, 0]), method, 0, bug)
        torch.testing.assert_close(got[b, 0], ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# DeiT: independent forward that exposes the attention probabilities
# ----------------------------------------------------------------------------------------------------------------
def deit_manual_forward(model, image):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image)))
    attns = []
    for blk in model.blocks:
        h = blk.norm1(x)
        bsz, length, dim = h.shape
        heads = blk.attn.num_heads
        qkv = blk.attn.qkv(h).reshape(bsz, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        attns.append(attn)
        o = blk.attn.proj((attn @ v).transpose(1, 2).reshape(bsz, length, dim))
        x = x + blk.ls1(o)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.head(model.norm(x)[:, 0]), attns


def test_deit_transformer_attr_matches_manual(deit):
    x = images(2, seed=7)
    classes = torch.tensor([[0, 2], [3, 1]])
    got = relevance_maps(deit, x, classes, 'transformer_attr')
    for b in range(2):
        logits, attns = deit_manual_forward(deit, x[b:b + 1])
        torch.testing.assert_close(logits, deit(x[b:b + 1]), rtol=1e-4, atol=1e-5)
        for k in range(2):
            grads = torch.autograd.grad(logits[0, classes[b, k]], attns, retain_graph=True)
            joint = torch.eye(attns[0].shape[-1])
            for attn, grad in zip(attns, grads):
                cam = (grad[0] * attn[0]).clamp(min=0).mean(0)
                joint = joint + cam @ joint
            ref = to_map(joint[0, 1:], deit.grid_size, (64, 64))
            torch.testing.assert_close(got[b, k], ref, rtol=1e-4, atol=1e-4)


def test_deit_rollout_and_raw_match_manual(deit):
    x = images(2, seed=8)
    classes = torch.tensor([[0], [1]])
    rollout = relevance_maps(deit, x, classes, 'rollout')
    raw = relevance_maps(deit, x, classes, 'raw_attention')
    for b in range(2):
        with torch.no_grad():
            _, attns = deit_manual_forward(deit, x[b:b + 1])
        mats = [a[0].mean(0) + torch.eye(a.shape[-1]) for a in attns]
        mats = [m / m.sum(-1, keepdim=True) for m in mats]
        joint = mats[0]
        for m in mats[1:]:
            joint = m @ joint
        torch.testing.assert_close(rollout[b, 0], to_map(joint[0, 1:], deit.grid_size, (64, 64)), rtol=1e-4,
                                   atol=1e-4)
        torch.testing.assert_close(raw[b, 0], to_map(attns[-1][0].mean(0)[0, 1:], deit.grid_size, (64, 64)),
                                   rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# batching, classes, autocast, errors
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('family,method', [(f, m) for f in METHODS for m in METHODS[f]])
def test_batch_equals_single_image_calls(vim, deit, family, method):
    model = vim if family == 'vim' else deit
    x = images(4, seed=11)
    classes = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]])
    batched = relevance_maps(model, x, classes, method, out_size=(32, 48))
    assert batched.shape == (4, 2, 32, 48)
    assert batched.min() >= 0 and batched.max() <= 1
    for b in range(4):
        single = relevance_maps(model, x[b:b + 1], classes[b:b + 1], method, out_size=(32, 48))
        torch.testing.assert_close(batched[b:b + 1], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('family,method', [('vim', 'ours'), ('vim', 'transformer_attr'), ('vim', 'mamba_attr'),
                                           ('deit', 'transformer_attr')])
def test_different_classes_give_different_maps(vim, deit, family, method):
    model = vim if family == 'vim' else deit
    x = images(2, seed=13)
    maps = relevance_maps(model, x, torch.tensor([[0, 1], [2, 3]]), method)
    assert (maps[:, 0] - maps[:, 1]).abs().amax(dim=(-2, -1)).min() > 1e-3


@pytest.mark.parametrize('method', ['ours', 'transformer_attr'])
def test_no_grad_caller_and_autocast(vim, method):
    x = images(2, seed=17)
    classes = torch.tensor([[1], [2]])
    ref = relevance_maps(vim, x, classes, method)
    with torch.no_grad():
        torch.testing.assert_close(relevance_maps(vim, x, classes, method), ref)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = relevance_maps(vim, x, classes, method)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert low.min() >= 0 and low.max() <= 1


def test_argument_errors(vim, deit):
    x = images(2, seed=19)
    with pytest.raises(ValueError, match='unknown method'):
        relevance_maps(vim, x, torch.tensor([[0], [1]]), 'gradcam')
    with pytest.raises(ValueError, match='class indices'):
        relevance_maps(deit, x, torch.tensor([[0], [NUM_CLASSES]]), 'rollout')
    with pytest.raises(ValueError, match='classes must be'):
        relevance_maps(deit, x, torch.tensor([[0, 1]]), 'rollout')
    with pytest.raises(ValueError, match='start_layer'):
        relevance_maps(vim, x, torch.tensor([[0], [1]]), 'ours', start_layer=5)
