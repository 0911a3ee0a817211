"""Refinement maths: random walk, PAR, dense CRF."""
import numpy as np
import pytest
import torch

from vim_wsss.wsss.refine import (crf_refine, dilated_neighbors, local_mask, neighbor_offsets, par_affinity,
                                  par_refine, random_walk, refine_probs, scores_to_probs, transition_matrix)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


# ---------------------------------------------------------------------------------------------------------------
# random walk
# ---------------------------------------------------------------------------------------------------------------
def test_transition_matrix_row_stochastic_and_symmetrised():
    aff = rand(2, 12, 12, seed=1) - 0.2  # some negatives: clamped
    trans = transition_matrix(aff, power=2.0, symmetric=True)
    torch.testing.assert_close(trans.sum(-1), torch.ones(2, 12))
    assert (trans >= 0).all()
    sym = (aff.clamp(min=0) + aff.clamp(min=0).transpose(1, 2)) / 2
    expected = sym.pow(2) / sym.pow(2).sum(-1, keepdim=True)
    torch.testing.assert_close(trans, expected)
    # asymmetric input without symmetrisation keeps the asymmetry
    raw = transition_matrix(aff, power=1.0, symmetric=False)
    torch.testing.assert_close(raw, aff.clamp(min=0) / aff.clamp(min=0).sum(-1, keepdim=True))


def test_transition_matrix_empty_row_is_self_loop():
    aff = rand(1, 5, 5, seed=2)
    aff[0, 3, :] = 0
    aff[0, :, 3] = 0
    trans = transition_matrix(aff)
    torch.testing.assert_close(trans[0, 3], torch.eye(5)[3])


@pytest.mark.parametrize('steps', [1, 3])
def test_random_walk_equals_matrix_power_and_conserves_mass(steps):
    bsz, k, grid = 2, 3, (4, 5)
    m = grid[0] * grid[1]
    maps = rand(bsz, k, *grid, seed=3)
    aff = rand(bsz, m, m, seed=4)
    out = random_walk(maps, aff, power=2.0, steps=steps)
    assert out.shape == maps.shape
    trans = transition_matrix(aff, power=2.0).double()
    for b in range(bsz):
        ref = maps[b].reshape(k, m).double() @ torch.linalg.matrix_power(trans[b], steps)
        torch.testing.assert_close(out[b].reshape(k, m).double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(dim=(-2, -1)), maps.sum(dim=(-2, -1)), rtol=1e-5, atol=1e-5)
    # 3-D input gives the same result
    torch.testing.assert_close(random_walk(maps.reshape(bsz, k, m), aff, steps=steps), out.reshape(bsz, k, m))


def test_random_walk_spreads_within_affinity_blocks():
    # two groups of patches with affinity only inside each group: mass never crosses
    m = 6
    aff = torch.zeros(1, m, m)
    aff[0, :3, :3] = rand(3, 3, seed=5) + 0.1
    aff[0, 3:, 3:] = rand(3, 3, seed=6) + 0.1
    maps = torch.tensor([[[1.0, 0, 0, 0, 0, 0]]])
    out = random_walk(maps, aff, steps=4)
    assert out[0, 0, 3:].abs().max() == 0
    assert (out[0, 0, :3] > 0).all()


def test_random_walk_radius():
    grid = (3, 3)
    mask = local_mask(grid, 1.0)
    assert mask.sum(1).tolist() == [3, 4, 3, 4, 5, 4, 3, 4, 3]
    aff = rand(1, 9, 9, seed=7) + 0.1
    maps = torch.zeros(1, 1, 9)
    maps[0, 0, 0] = 1
    out = random_walk(maps, aff, steps=1, grid=grid, radius=1.0)
    assert out[0, 0, ~mask[0]].abs().max() == 0
    with pytest.raises(ValueError):
        random_walk(maps, aff, radius=1.0)


# ---------------------------------------------------------------------------------------------------------------
# PAR
# ---------------------------------------------------------------------------------------------------------------
def naive_neighbors(x, dilations):
    bsz, ch, height, width = x.shape
    offsets = neighbor_offsets(dilations).long().tolist()
    out = torch.empty(bsz, ch, len(offsets), height, width)
    for n, (dy, dx) in enumerate(offsets):
        for i in range(height):
            for j in range(width):
                out[:, :, n, i, j] = x[:, :, min(max(i + dy, 0), height - 1), min(max(j + dx, 0), width - 1)]
    return out


def test_dilated_neighbors_equals_naive_gather():
    x = rand(2, 3, 7, 9, seed=8)
    dilations = (1, 2, 5)
    got = dilated_neighbors(x, dilations)
    assert got.shape == (2, 3, 24, 7, 9)
    torch.testing.assert_close(got, naive_neighbors(x, dilations), rtol=0, atol=0)


def two_colour_image(height=24, width=32, edge=14, noise=0.02, seed=0):
    """Left part dark red, right part light blue (float, 0..1), small noise."""
    img = torch.zeros(1, 3, height, width)
    img[:, :, :, :edge] = torch.tensor([0.7, 0.1, 0.1]).view(1, 3, 1, 1)
    img[:, :, :, edge:] = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    return img + noise * rand(1, 3, height, width, seed=seed)


def test_par_affinity_is_distribution():
    img = two_colour_image()
    weights = par_affinity(img, dilations=(1, 2, 4))
    assert weights.shape == (1, 1, 24, 24, 32)
    torch.testing.assert_close(weights.sum(2), torch.ones(1, 1, 24, 32))
    assert (weights >= 0).all()


def test_par_keeps_probabilities_and_sharpens_across_edge():
    height, width, edge = 24, 32, 14
    img = two_colour_image(height, width, edge)
    # blurry probabilities: a linear ramp that crosses 0.5 at the colour edge
    ramp = torch.linspace(0, 1, width).clamp(0, 1)
    ramp = (ramp - ramp[edge] + 0.5).clamp(0.02, 0.98)
    fg = ramp.view(1, 1, 1, width).expand(1, 1, height, width)
    probs = torch.cat([1 - fg, fg], dim=1)
    out = par_refine(img, probs, dilations=(1, 2, 4, 8), iters=10)
    torch.testing.assert_close(out.sum(1), torch.ones(1, height, width))
    assert (out >= 0).all() and (out <= 1 + 1e-6).all()
    # the probabilities inside each colour region move towards the region's majority
    right, left = out[0, 1, :, edge:], out[0, 1, :, :edge]
    assert right.mean() > fg[0, 0, :, edge:].mean() + 0.05
    assert left.mean() < fg[0, 0, :, :edge].mean() - 0.05
    # and the 0.5 crossing stays at the colour edge
    labels = out.argmax(1)[0]
    assert (labels[:, edge + 1:] == 1).float().mean() > 0.95
    assert (labels[:, :edge - 1] == 0).float().mean() > 0.95


def test_par_on_uniform_image_is_plain_smoothing():
    img = torch.full((1, 3, 10, 10), 0.5)
    probs = scores_to_probs(rand(1, 3, 10, 10, seed=9))
    out = par_refine(img, probs, dilations=(1, 2), iters=30)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 10, 10))
    assert out.std(dim=(-2, -1)).max() < probs.std(dim=(-2, -1)).min()


# ---------------------------------------------------------------------------------------------------------------
# CRF
# ---------------------------------------------------------------------------------------------------------------
def test_crf_improves_noisy_two_region_map():
    height, width, edge = 32, 40, 18
    img = (two_colour_image(height, width, edge, noise=0.0)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    truth = np.zeros((height, width), dtype=np.int64)
    truth[:, edge:] = 1
    rng = np.random.default_rng(0)
    fg = np.where(truth == 1, 0.65, 0.35) + rng.normal(0, 0.25, size=truth.shape)
    fg = np.clip(fg, 0.01, 0.99).astype(np.float32)
    probs = np.stack([1 - fg, fg])
    before = (probs.argmax(0) == truth).mean()
    out = crf_refine(img, probs, iters=10)
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)
    after = (out.argmax(0) == truth).mean()
    assert before < 0.9 and after > 0.98, (before, after)


def test_crf_rejects_bad_image():
    with pytest.raises(ValueError):
        crf_refine(np.zeros((4, 4, 3), np.float32), np.ones((2, 4, 4), np.float32) / 2)
    with pytest.raises(ValueError):
        crf_refine(np.zeros((4, 5, 3), np.uint8), np.ones((2, 4, 4), np.float32) / 2)


def test_refine_probs_order_and_unknown_step():
    img = (two_colour_image(16, 16, 8)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    probs = scores_to_probs(rand(2, 16, 16, seed=10))
    a = refine_probs(img, probs, ['par', 'crf'], par_kwargs=dict(dilations=(1, 2), iters=3))
    b = refine_probs(img, probs, ['crf', 'par'], par_kwargs=dict(dilations=(1, 2), iters=3))
    assert a.shape == b.shape == probs.shape and not torch.allclose(a, b)
    torch.testing.assert_close(refine_probs(img, probs, []), probs)
    half = refine_probs(img, probs, ['par'], par_kwargs=dict(dilations=(1,), iters=2), par_scale=0.5)
    assert half.shape == probs.shape
    with pytest.raises(ValueError, match='unknown refinement step'):
        refine_probs(img, probs, ['rw'])


def test_scores_to_probs_keeps_argmax():
    scores = rand(4, 5, 6, seed=11)
    probs = scores_to_probs(scores, power=3.0)
    torch.testing.assert_close(probs.sum(0), torch.ones(5, 6))
    assert torch.equal(probs.argmax(0), scores.argmax(0))


def test_par_affinity_matches_direct_formula():
    img = rand(1, 3, 9, 11, seed=12) * 255
    dilations = (1, 3)
    neigh = naive_neighbors(img, dilations)
    std = neigh.std(dim=2, keepdim=True)
    color = -((neigh - img.unsqueeze(2)).abs() / (std + 1e-8) / 0.3).pow(2)
    color = torch.softmax(color.mean(dim=1, keepdim=True), dim=2)
    dist = neighbor_offsets(dilations).norm(dim=1)
    pos = torch.softmax(-(dist / dist.std() / 0.3).pow(2), dim=0).view(1, 1, -1, 1, 1)
    expected = color + 0.01 * pos
    expected = expected / expected.sum(2, keepdim=True)
    torch.testing.assert_close(par_affinity(img, dilations), expected, rtol=1e-4, atol=1e-6)
