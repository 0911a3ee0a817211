"""Vision Mamba: API, an independent re-implementation of one block, scan paths at model level, explain outputs."""
import math

import pytest
import timm
import torch

import vim_wsss.models  # noqa: F401  registers the entrypoints
from vim_wsss.models import VisionMamba, create_model, list_models
from vim_wsss.models.vim import BiMambaMixer
from vim_wsss.ops import cuda_kernel_available, scan_impl

SCAN_PATHS = ['ref', 'fast'] + (['cuda'] if cuda_kernel_available() else [])


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model('vim_test_patch8_64', **dict(dict(num_classes=5), **kw)).eval()


def images(batch=2, size=64, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(model, seed=3, scale=0.2):
    """Move every parameter off its structured init (A_log = log(1..N), D = 1, zero biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 0.1))
    return model


# ------------------------------------------------------------------------------------------------------------------
# an independent implementation of one block, straight from the equations (double precision, plain loops)
# ------------------------------------------------------------------------------------------------------------------
def block_from_equations(params, hidden, residual, eps=1e-5):
    p = {k: v.detach().double() for k, v in params.items()}
    residual = residual.double() + hidden.double()
    normed = residual / torch.sqrt((residual ** 2).mean(-1, keepdim=True) + eps) * p['norm.weight']
    xz = normed @ p['mixer.in_proj.weight'].T  # (B, L, 2E)
    E = xz.shape[-1] // 2
    N = p['mixer.A_log'].shape[1]
    R = p['mixer.dt_proj.weight'].shape[1]
    batch, length = xz.shape[:2]
    names = {'f': ('conv1d', 'x_proj', 'dt_proj', 'A_log', 'D'),
             'b': ('conv1d_b', 'x_proj_b', 'dt_proj_b', 'A_b_log', 'D_b')}
    outs = []
    for direction, (conv, xproj, dtproj, alog, dskip) in names.items():
        x, z = xz[..., :E], xz[..., E:]
        if direction == 'b':
            x, z = x.flip(1), z.flip(1)
        w, b = p[f'mixer.{conv}.weight'][:, 0], p[f'mixer.{conv}.bias']  # (E, K), (E,)
        K = w.shape[1]
        conv_out = b.expand(batch, length, E).clone()
        for t in range(length):
            for k in range(K):  # tap K-1 multiplies the current token, tap K-2 the previous one, ...
                if t - (K - 1) + k >= 0:
                    conv_out[:, t] += w[:, k] * x[:, t - (K - 1) + k]
        u = conv_out * torch.sigmoid(conv_out)
        dbl = u @ p[f'mixer.{xproj}.weight'].T
        delta = torch.log1p(torch.exp(dbl[..., :R] @ p[f'mixer.{dtproj}.weight'].T + p[f'mixer.{dtproj}.bias']))
        Bm, Cm = dbl[..., R:R + N], dbl[..., R + N:]
        A, D = -torch.exp(p[f'mixer.{alog}']), p[f'mixer.{dskip}']
        h = torch.zeros(batch, E, N, dtype=torch.float64)
        y = torch.zeros(batch, length, E, dtype=torch.float64)
        for t in range(length):
            h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
            y[:, t] = (h * Cm[:, t, None, :]).sum(-1) + D * u[:, t]
        y = y * z * torch.sigmoid(z)
        outs.append(y.flip(1) if direction == 'b' else y)
    return ((outs[0] + outs[1]) / 2) @ p['mixer.out_proj.weight'].T, residual


@pytest.mark.parametrize('impl', SCAN_PATHS)
def test_block_matches_equations(impl):
    model = perturb(tiny())
    block = model.layers[1]
    g = torch.Generator().manual_seed(5)
    hidden, residual = torch.randn(2, 65, 32, generator=g), torch.randn(2, 65, 32, generator=g)
    expected_out, expected_res = block_from_equations(block.state_dict(), hidden, residual)
    with scan_impl(impl), torch.no_grad():
        out, res = block(hidden, residual)
    assert res.dtype == torch.float32
    torch.testing.assert_close(res.double(), expected_res)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-4, atol=1e-5 * expected_out.abs().max().item())


def test_scan_paths_agree_at_model_level():
    model = perturb(tiny())
    x = images()
    results = {}
    for impl in SCAN_PATHS:
        model.zero_grad()
        xi = x.clone().requires_grad_()
        with scan_impl(impl):
            logits = model(xi)
        (logits * torch.arange(1., 6.)).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        results[impl] = (logits.detach(), xi.grad, grads)
    ref_logits, ref_xgrad, ref_grads = results['ref']
    for impl in SCAN_PATHS[1:]:
        logits, xgrad, grads = results[impl]
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5 * ref_logits.abs().max().item())
        torch.testing.assert_close(xgrad, ref_xgrad, rtol=1e-4, atol=1e-5 * ref_xgrad.abs().max().item())
        for k, g in ref_grads.items():
            torch.testing.assert_close(grads[k], g, rtol=1e-4, atol=1e-5 * g.abs().max().item() + 1e-12, msg=k)


def set_conv_impl(model, impl):
    for module in model.modules():
        if isinstance(module, BiMambaMixer):
            module.conv_impl = impl
    return model


@pytest.mark.parametrize('train', [False, True])
def test_conv_paths_agree_at_model_level(train):
    """The mixer's conv + SiLU through the dispatch ('auto': compiled on CPU) and through the PyTorch formula ('ref'):
    logits, input gradients, every parameter gradient and the explain internals (conv_out) agree to fp32 rounding."""
    model = perturb(tiny()).train(train)
    x = images()
    results = {}
    for impl in ('ref', 'auto'):
        set_conv_impl(model, impl)
        model.zero_grad()
        xi = x.clone().requires_grad_()
        logits = model(xi)
        (logits * torch.arange(1., 6.)).sum().backward()
        with torch.no_grad():
            _, internals = model.layers[-1].mixer(torch.randn(2, 65, 32, generator=torch.Generator().manual_seed(4)),
                                                 return_internals=True)
        results[impl] = [logits.detach(), xi.grad] + [p.grad for p in model.parameters()] + \
            [getattr(internals[d], k) for d in 'fb' for k in ('conv_out', 'u')]
    set_conv_impl(model, 'auto')
    for got, want in zip(results['auto'], results['ref']):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item() + 1e-12)


def test_geometry_and_api():
    model = tiny()
    assert (model.cls_index, model.grid_size, model.num_patches, model.embed_dim) == (32, (8, 8), 64, 32)
    assert model.pos_embed.shape == (1, 65, 32)
    assert model.feature_info == [dict(module=f'layers.{i}', num_chs=32, reduction=8) for i in range(2)]
    x = images()
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 65, 32)
    torch.testing.assert_close(model.forward_head(tokens), model(x))
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 32])
    patches = model.patch_tokens(tokens)
    assert patches.shape == (2, 64, 32)
    torch.testing.assert_close(patches[:, 31], tokens[:, 31])
    torch.testing.assert_close(patches[:, 32], tokens[:, 33])
    # the class token is inserted before adding pos_embed: index M//2 of pos_embed belongs to it
    emb = model.embed(x)
    torch.testing.assert_close(emb[:, 32], (model.cls_token[0] + model.pos_embed[:, 32]).expand(2, -1))
    nwd = model.no_weight_decay()
    assert {'pos_embed', 'cls_token', 'layers.1.mixer.A_b_log', 'layers.0.mixer.D_b', 'layers.0.mixer.A_log',
            'layers.1.mixer.D'} <= nwd
    assert all(n in dict(model.named_parameters()) for n in nwd)


def test_mixer_parameters_follow_official_sizes():
    model = create_model('vim_tiny_patch16_224')
    mixer = model.layers[0].mixer
    assert (mixer.d_inner, mixer.dt_rank, mixer.d_state, mixer.d_conv) == (384, 12, 16, 4)
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None and mixer.x_proj.bias is None
    torch.testing.assert_close(mixer.A_log[5], torch.log(torch.arange(1., 17.)))
    torch.testing.assert_close(mixer.D_b, torch.ones(384))
    dt = torch.nn.functional.softplus(mixer.dt_proj_b.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize('kw,lo,hi,scale', [(dict(), 1e-3, 0.1, 1.0),
                                            (dict(dt_min=0.05, dt_max=0.3, a_init_scale=0.03), 0.05, 0.3, 0.03)])
def test_scan_initialisation_knobs_reach_every_block(kw, lo, hi, scale):
    model = create_model('vim_test_patch8_64', **kw)
    for block in model.layers:
        mixer = block.mixer
        for A_log, dt_proj in ((mixer.A_log, mixer.dt_proj), (mixer.A_b_log, mixer.dt_proj_b)):
            torch.testing.assert_close(A_log, torch.log(scale * torch.arange(1., 1. + mixer.d_state)).expand_as(A_log))
            dt = torch.nn.functional.softplus(dt_proj.bias)
            assert dt.min() >= lo * 0.999 and dt.max() <= hi * 1.001 and dt.max() > (lo + hi) / 2


def test_demo_model_starts_with_long_range_scan():
    mixer = create_model('vim_mini_patch8_64').layers[0].mixer
    assert mixer.a_init_scale == 0.03 and mixer.dt_init['dt_min'] == 0.05 and mixer.dt_init['dt_max'] == 0.3


def test_stride8_sequence_geometry():
    model = create_model('vim_tiny_patch16_stride8_224').eval()
    assert model.grid_size == (27, 27) and model.num_patches == 729 and model.cls_index == 364
    assert model.pos_embed.shape == (1, 730, 192)
    with torch.no_grad():
        emb = model.embed(torch.randn(1, 3, 224, 224))  # only the embedding: a full forward at L=730 is slow on CPU
    assert emb.shape == (1, 730, 192)
    torch.testing.assert_close(emb[0, 364], model.cls_token[0, 0] + model.pos_embed[0, 364])


def test_timm_registry():
    assert {'vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224', 'vim_tiny_patch16_stride8_224',
            'vim_small_patch16_stride8_224', 'vim_test_patch8_64', 'vim_mini_patch8_64'} <= set(list_models('vim_*'))
    assert 'vim_small_patch16_224' in timm.list_models('vim_*')
    model = timm.create_model('vim_small_patch16_224')
    assert isinstance(model, VisionMamba)
    assert (model.embed_dim, len(model.layers), model.cls_index) == (384, 24, 98)
    assert sum(p.numel() for p in model.parameters()) == 25_796_584  # ~26M, as the official table
    mini = timm.create_model('vim_mini_patch8_64', num_classes=20, drop_path_rate=0.1, img_size=128)
    assert (mini.embed_dim, len(mini.layers), mini.grid_size, mini.num_classes) == (64, 6, (16, 16), 20)
    with pytest.raises(ValueError, match='unknown backbone'):
        create_model('vim_small_patch16_224_bimambav2_final_pool_mean')


def test_forward_intermediates():
    model = tiny()
    x = images()
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape for t in inter] == [(2, 32, 8, 8)] * 2
    nlc = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)
    explain = model.forward_explain(x)
    torch.testing.assert_close(nlc[0], explain['residuals'][1])  # stream after block 0 = entering block 1
    # NCHW maps are the patch tokens in row-major order
    torch.testing.assert_close(inter[0].flatten(2).transpose(1, 2), model.patch_tokens(explain['residuals'][1]))
    normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt='NLC', intermediates_only=True)
    torch.testing.assert_close(normed[0], final)
    early = model.forward_intermediates(x, indices=[0], intermediates_only=True, stop_early=True)
    torch.testing.assert_close(early[0], inter[0])
    features = timm.create_model('vim_test_patch8_64', features_only=True, out_indices=(0, 1))
    assert [f.shape for f in features(x)] == [(2, 32, 8, 8)] * 2


def test_forward_explain_residual_stream_and_internals():
    model = perturb(tiny())
    x = images()
    with torch.no_grad():
        out = model.forward_explain(x)
        torch.testing.assert_close(out['logits'], model(x))
    residuals, internals = out['residuals'], out['internals']
    assert len(residuals) == len(internals) == 2 and residuals[0].dtype == torch.float32
    torch.testing.assert_close(residuals[0], model.embed(x))
    with torch.no_grad():
        layer = model.layers[0]
        torch.testing.assert_close(residuals[1], residuals[0] + layer.mixer(layer.norm(residuals[0])))
    f, b = internals[1]['f'], internals[1]['b']
    assert f.u.shape == (2, 64, 65) and f.B.shape == (2, 16, 65) and f.A.shape == (64, 16)
    assert f.conv_weight.shape == (64, 4) and f.D.shape == (64,)
    torch.testing.assert_close(b.x, f.x.flip(-1))  # shared in_proj, flipped order
    torch.testing.assert_close(b.z, f.z.flip(-1))
    torch.testing.assert_close(f.u, torch.nn.functional.silu(f.conv_out))
    assert not torch.allclose(b.delta.flip(-1), f.delta)  # separate dt_proj for the backward branch


def test_forward_explain_per_image_gradients():
    model = perturb(tiny())
    x = images()
    out = model.forward_explain(x)
    grads = torch.autograd.grad(out['logits'][:, 3].sum(), out['residuals'])
    for i in range(2):
        single = model.forward_explain(x[i:i + 1])
        single_grads = torch.autograd.grad(single['logits'][0, 3], single['residuals'])
        for g, gs in zip(grads, single_grads):
            assert gs.abs().max() > 0
            torch.testing.assert_close(g[i:i + 1], gs, rtol=1e-4, atol=1e-6)
    # frozen weights: the residuals are still in the graph
    for p in model.parameters():
        p.requires_grad_(False)
    out = model.forward_explain(x)
    assert all(r.requires_grad for r in out['residuals'])


def test_grad_checkpointing_same_gradients():
    x = images()
    grads = []
    for ckpt in (False, True):
        model = perturb(tiny()).train()
        model.set_grad_checkpointing(ckpt)
        model(x).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], msg=k)


def test_drop_path_and_low_precision():
    # official schedule: block i > 0 uses linspace(0, rate, depth)[i - 1], the final add uses the full rate
    deeper = tiny(drop_path_rate=0.2, depth=3)
    assert [type(layer.drop_path).__name__ for layer in deeper.layers] == ['Identity', 'Identity', 'DropPath']
    assert deeper.layers[2].drop_path.drop_prob == pytest.approx(0.1) and deeper.drop_path.drop_prob == 0.2
    model = tiny(drop_path_rate=0.2)
    x = images()
    torch.testing.assert_close(model(x), model(x))  # eval: deterministic
    model.train()
    assert model(x).shape == (2, 5)
    model.eval()
    reference = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = model(x)
    torch.testing.assert_close(amp.float(), reference, rtol=0.1, atol=0.1 * reference.abs().max().item())
    half = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, rtol=0.1, atol=0.1 * reference.abs().max().item())


def test_trains_from_scratch():
    """A few Adam steps on two separable patterns drive the loss down (init, scan gradients and wiring work)."""
    torch.manual_seed(0)
    model = create_model('vim_test_patch8_64', num_classes=2).train()
    x = torch.randn(8, 3, 64, 64) * 0.2
    y = torch.arange(8) % 2
    x[y == 1, :, :32] += 1.0  # class 1: bright top half
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]
