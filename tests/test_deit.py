"""DeiT wrapper: same backbone API as ViM, attention probabilities in the graph, official checkpoint loading."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from vim_wsss.models import CheckpointError, DeiT, create_model, list_models
from vim_wsss.models import load_weights
from vim_wsss.models.deit import checkpoint_filter_fn


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model('deit_test_patch8_64', **dict(dict(num_classes=5), **kw)).eval()


def images(batch=2, size=64, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_geometry_and_api():
    model = tiny()
    assert (model.cls_index, model.grid_size, model.num_patches, model.embed_dim) == (0, (8, 8), 64, 32)
    assert [f['num_chs'] for f in model.feature_info] == [32, 32] and model.feature_info[0]['reduction'] == 8
    x = images()
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 65, 32)
    torch.testing.assert_close(model.forward_head(tokens), model(x))
    torch.testing.assert_close(model.patch_tokens(tokens), tokens[:, 1:])
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, tokens)
    assert [t.shape for t in inter] == [(2, 32, 8, 8)] * 2
    explain = model.forward_explain(x)
    nlc = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)
    torch.testing.assert_close(nlc[0], model.patch_tokens(explain['residuals'][1]))
    torch.testing.assert_close(inter[0].flatten(2).transpose(1, 2), nlc[0])


def test_forward_explain_attention_in_graph():
    model = tiny()
    x = images()
    out = model.forward_explain(x)
    torch.testing.assert_close(out['logits'], model(x))
    attn, residuals = out['attn'], out['residuals']
    assert len(attn) == len(residuals) == 2
    assert attn[0].shape == (2, 2, 65, 65)
    torch.testing.assert_close(attn[1].sum(-1), torch.ones(2, 2, 65))
    assert (attn[1] >= 0).all()
    grads = torch.autograd.grad(out['logits'][:, 2].sum(), attn + residuals)
    assert all(g is not None and g.abs().max() > 0 for g in grads)
    # the fused kernel is restored and nothing stays recorded
    assert all(block.attn.attn_drop.recorded is None for block in model.blocks)
    assert [block.attn.fused_attn for block in model.blocks] == [tiny().blocks[0].attn.fused_attn] * 2


def test_attention_matches_manual_softmax():
    model = tiny()
    x = images(batch=1)
    out = model.forward_explain(x)
    block = model.blocks[1]
    with torch.no_grad():
        h = block.norm1(out['residuals'][1])
        qkv = block.attn.qkv(h).reshape(1, 65, 3, 2, 16).permute(2, 0, 3, 1, 4)
        expected = (qkv[0] @ qkv[1].transpose(-2, -1) * 16 ** -0.5).softmax(-1)
    torch.testing.assert_close(out['attn'][1].detach(), expected)


def test_forward_explain_per_image_gradients_and_no_grad():
    model = tiny()
    x = images()
    out = model.forward_explain(x)
    grads = torch.autograd.grad(out['logits'][:, 1].sum(), out['attn'] + out['residuals'])
    for i in range(2):
        single = model.forward_explain(x[i:i + 1])
        single_grads = torch.autograd.grad(single['logits'][0, 1], single['attn'] + single['residuals'])
        for g, gs in zip(grads, single_grads):
            torch.testing.assert_close(g[i:i + 1], gs, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        quiet = model.forward_explain(x)
    assert not quiet['attn'][0].requires_grad
    torch.testing.assert_close(quiet['logits'], out['logits'].detach())
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = model.forward_explain(x)
    assert all(a.requires_grad for a in frozen['attn'])


def test_registry_names_and_sizes():
    assert {'deit_s_patch16_224', 'deit_test_patch8_64', 'deit_mini_patch8_64'} <= set(list_models('deit_*'))
    model = timm.create_model('deit_s_patch16_224')
    assert isinstance(model, DeiT) and isinstance(model, VisionTransformer)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads, model.num_patches) == (384, 12, 6, 196)
    mini = create_model('deit_mini_patch8_64', num_classes=20)
    vim_mini = create_model('vim_mini_patch8_64')
    assert mini.embed_dim == vim_mini.embed_dim and mini.grid_size == vim_mini.grid_size
    n_mini, n_vim = (sum(p.numel() for p in m.parameters()) for m in (mini, vim_mini))
    assert 0.75 < n_mini / n_vim < 1.33  # the demo compares models of about the same size
    assert timm.create_model('deit_small_patch16_224').__class__ is VisionTransformer  # timm's own name untouched


def official_deit_file(tmp_path, img_size=64, num_classes=1000):
    """A DeiT checkpoint as facebookresearch/deit saves it ({'model': ...}), from timm's VisionTransformer."""
    torch.manual_seed(7)
    source = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                               num_classes=num_classes).eval()
    path = tmp_path / 'deit_test.pth'
    torch.save({'model': source.state_dict()}, path)
    return source, path


def test_official_checkpoint_loads_and_reproduces(tmp_path):
    source, path = official_deit_file(tmp_path)
    model = create_model('deit_test_patch8_64', pretrained=str(path)).eval()
    x = images()
    torch.testing.assert_close(model(x), source(x))
    torch.testing.assert_close(model.forward_explain(x)['logits'], source(x))


def test_checkpoint_resample_head_and_errors(tmp_path):
    source, path = official_deit_file(tmp_path)
    model = create_model('deit_test_patch8_64', img_size=96, num_classes=20, pretrained=str(path)).eval()
    assert model.pos_embed.shape == (1, 145, 32) and model.head.weight.shape == (20, 32)
    torch.testing.assert_close(model.pos_embed[:, 0], source.pos_embed[:, 0])  # class entry kept
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    same = checkpoint_filter_fn(source.state_dict(), tiny(num_classes=1000))
    torch.testing.assert_close(same['pos_embed'], source.pos_embed)
    broken = dict(source.state_dict())
    broken['blocks.0.attn.qkv.weight'] = torch.zeros(3, 32)
    del broken['norm.weight']
    torch.save({'model': broken}, tmp_path / 'broken.pth')
    with pytest.raises(CheckpointError, match=r'(?s)broken\.pth.*missing \(1\): norm\.weight.*blocks\.0\.attn\.qkv'):
        load_weights(tiny(), tmp_path / 'broken.pth', new_head=True)
