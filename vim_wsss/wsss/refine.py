"""Refinement of class maps: affinity random walk, pixel-adaptive refinement (PAR) and dense CRF.

* :func:`random_walk` — patch-level propagation with an attention affinity (AFA / MCTformer / PSA style):
  symmetrise, sharpen by an elementwise power, optionally cut to a local radius, row-normalise into a transition
  matrix ``T`` and apply ``t`` steps, ``maps <- maps @ T`` (mass of every class map is conserved).
* :func:`par_refine` — pixel-level propagation with image-colour affinities over dilated 8-neighbourhoods
  (written from the description in ToCo/AFA: softmax over neighbours of ``-(|dRGB| / std / w)^2`` averaged over
  colour channels, plus a small positional softmax term; here renormalised so the output stays a distribution).
* :func:`crf_refine` — fully connected CRF (pydensecrf2) with smoothness and appearance kernels; default spatial
  widths are scaled with the image size so small images are not over-smoothed.

:func:`refine_probs` chains PAR and CRF in a caller-given order. Everything except the CRF is pure torch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    'transition_matrix', 'random_walk', 'local_mask', 'neighbor_offsets', 'dilated_neighbors', 'par_affinity',
    'par_refine', 'crf_refine', 'crf_defaults', 'scores_to_probs', 'refine_probs', 'PIXEL_STEPS',
]

#: Pixel-level refinement steps understood by :func:`refine_probs` ('rw' is patch-level and handled upstream).
PIXEL_STEPS = ('par', 'crf')


# ----------------------------------------------------------------------------------------------------------------
# random walk on patches
# ----------------------------------------------------------------------------------------------------------------
def local_mask(grid: Tuple[int, int], radius: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """``(M, M)`` bool: patches within Euclidean ``radius`` (in patch units) of each other on a row-major grid."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing='ij')
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    return torch.cdist(coords, coords) <= radius


def transition_matrix(affinity: torch.Tensor, power: float = 2.0, symmetric: bool = True,
                      grid: Optional[Tuple[int, int]] = None, radius: Optional[float] = None) -> torch.Tensor:
    """Row-stochastic transition matrix from a non-negative affinity.

    Args:
        affinity: ``(B, M, M)`` (negative entries are clamped to 0).
        power: elementwise sharpening exponent (AFA uses 2).
        symmetric: use ``(A + A^T) / 2``.
        grid: patch grid (gh, gw) with gh * gw = M, needed for ``radius``.
        radius: keep only pairs within this many patches (None = all pairs).

    Returns:
        ``(B, M, M)`` fp32 with rows summing to 1 (a row with no mass becomes a self-loop).
    """
    if affinity.dim() != 3 or affinity.shape[-1] != affinity.shape[-2]:
        raise ValueError(f'affinity must be (B, M, M), got {tuple(affinity.shape)}')
    aff = affinity.float().clamp(min=0)
    if symmetric:
        aff = (aff + aff.transpose(1, 2)) / 2
    aff = aff.pow(power)
    if radius is not None:
        if grid is None or grid[0] * grid[1] != aff.shape[-1]:
            raise ValueError(f'radius needs grid=(gh, gw) with gh * gw = {aff.shape[-1]}, got {grid}')
        aff = aff * local_mask(grid, radius, aff.device)
    rows = aff.sum(dim=-1, keepdim=True)
    eye = torch.eye(aff.shape[-1], device=aff.device, dtype=aff.dtype).expand_as(aff)
    empty = rows <= 0
    aff = torch.where(empty, eye, aff)
    return aff / torch.where(empty, torch.ones_like(rows), rows)


def random_walk(maps: torch.Tensor, affinity: torch.Tensor, power: float = 2.0, steps: int = 1,
                symmetric: bool = True, grid: Optional[Tuple[int, int]] = None,
                radius: Optional[float] = None) -> torch.Tensor:
    """Propagate class maps over patches: ``maps @ T^steps`` with ``T`` = :func:`transition_matrix`.

    Args:
        maps: ``(B, K, M)`` or ``(B, K, gh, gw)`` (gh * gw = M) non-negative class maps.
        affinity: ``(B, M, M)`` patch affinity (rows = query patches).
        power, symmetric, radius: see :func:`transition_matrix`.
        steps: number of walk steps (0 returns the input).
        grid: patch grid for ``radius`` (taken from 4-D ``maps`` when not given).

    Returns:
        Maps with the input's shape, fp32; the sum over patches of every map is unchanged.
    """
    shape = maps.shape
    if maps.dim() == 4:
        grid = grid or (shape[2], shape[3])
        maps = maps.reshape(shape[0], shape[1], -1)
    if maps.dim() != 3 or maps.shape[0] != affinity.shape[0] or maps.shape[-1] != affinity.shape[-1]:
        raise ValueError(f'maps {tuple(shape)} do not match affinity {tuple(affinity.shape)}')
    if steps < 0:
        raise ValueError(f'steps must be >= 0, got {steps}')
    trans = transition_matrix(affinity, power=power, symmetric=symmetric, grid=grid, radius=radius)
    out = maps.float()
    for _ in range(steps):
        out = torch.bmm(out, trans)
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------------------------------
# PAR
# ----------------------------------------------------------------------------------------------------------------
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbor_offsets(dilations: Sequence[int]) -> torch.Tensor:
    """``(N, 2)`` (dy, dx) offsets: the 8-neighbourhood at every dilation, N = 8 * len(dilations)."""
    return torch.tensor([(dy * d, dx * d) for d in dilations for dy, dx in _RING], dtype=torch.float32)


def dilated_neighbors(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Values of the dilated 8-neighbours of every pixel, replicate padding at the border.

    Args:
        x: ``(B, C, H, W)``.
        dilations: neighbour distances (in pixels).

    Returns:
        ``(B, C, N, H, W)`` with N = 8 * len(dilations), in :func:`neighbor_offsets` order.
    """
    height, width = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, (pad, pad, pad, pad), mode='replicate')
    views = [padded[..., pad + dy * d: pad + dy * d + height, pad + dx * d: pad + dx * d + width]
             for d in dilations for dy, dx in _RING]
    return torch.stack(views, dim=2)


def par_affinity(image: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), color_weight: float = 0.3,
                 pos_weight: float = 0.3, pos_mix: float = 0.01) -> torch.Tensor:
    """Pixel-adaptive neighbour weights.

    Colour term per neighbour n of pixel p: ``mean_c -(|I_c(n) - I_c(p)| / (std_c(p) + eps) / color_weight)^2``
    where ``std_c(p)`` is the standard deviation of channel c over p's neighbours; softmax over neighbours. Positional
    term: the same form on the offset lengths (softmax over neighbours, identical for every pixel), mixed in with
    weight ``pos_mix``; the sum is renormalised over neighbours.

    Args:
        image: ``(B, 3, H, W)`` float (any affine colour scale; the per-pixel std makes it scale-free).
        dilations: neighbour distances.
        color_weight: width of the colour kernel (smaller = sharper edges).
        pos_weight: width of the positional kernel.
        pos_mix: weight of the positional term.

    Returns:
        ``(B, 1, N, H, W)`` non-negative, summing to 1 over N.
    """
    img = image.float()
    diff = dilated_neighbors(img, dilations) - img.unsqueeze(2)  # (B, 3, N, H, W)
    sq = diff.pow(2)
    count = diff.shape[2]
    # std over neighbours of the neighbour values (= of the differences), one pass: E[d^2] - E[d]^2, unbiased
    var = (sq.mean(dim=2, keepdim=True) - diff.mean(dim=2, keepdim=True).pow(2)).clamp(min=0) * (count / (count - 1))
    color = -(sq / ((var.sqrt() + 1e-8) * color_weight).pow(2))
    color = F.softmax(color.mean(dim=1, keepdim=True), dim=2)
    dist = neighbor_offsets(dilations).to(img.device).norm(dim=1)
    pos = F.softmax(-(dist / (dist.std() + 1e-8) / pos_weight).pow(2), dim=0).view(1, 1, -1, 1, 1)
    weights = color + pos_mix * pos
    return weights / weights.sum(dim=2, keepdim=True)


def par_refine(image: torch.Tensor, probs: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
               iters: int = 10, color_weight: float = 0.3, pos_weight: float = 0.3,
               pos_mix: float = 0.01) -> torch.Tensor:
    """Pixel-adaptive refinement: ``iters`` rounds of ``P(p) <- sum_n w(p, n) P(n)``.

    Args:
        image: ``(B, 3, H, W)`` float image (raw or normalised).
        probs: ``(B, C, H, W)`` class probabilities (or any non-negative scores).
        dilations, color_weight, pos_weight, pos_mix: see :func:`par_affinity`.
        iters: propagation rounds.

    Returns:
        ``(B, C, H, W)`` fp32; a probability map stays one (weights are a convex combination).
    """
    if image.shape[0] != probs.shape[0] or image.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f'image {tuple(image.shape)} and probs {tuple(probs.shape)} must share B, H, W')
    weights = par_affinity(image, dilations, color_weight, pos_weight, pos_mix)
    out = probs.float()
    for _ in range(iters):
        out = (dilated_neighbors(out, dilations) * weights).sum(dim=2)
    return out


# ----------------------------------------------------------------------------------------------------------------
# dense CRF
# ----------------------------------------------------------------------------------------------------------------
def crf_defaults(height: int, width: int) -> dict:
    """Bilateral kernel widths for an image of this size.

    The usual VOC settings (``bi_xy_std`` 50-80 px for ~500 px images, ``bi_rgb_std`` 3-5) are scaled with the
    image's larger side, so a 96 px image gets ``bi_xy_std`` ~ 12 px instead of a kernel wider than the image.
    """
    side = max(height, width)
    return dict(bi_xy_std=max(3.0, 65.0 * side / 500.0), bi_rgb_std=5.0, bi_w=4.0)


def crf_refine(image: np.ndarray, probs: np.ndarray, iters: int = 10, pos_xy_std: float = 1.0, pos_w: float = 3.0,
               bi_xy_std: Optional[float] = None, bi_rgb_std: Optional[float] = None,
               bi_w: Optional[float] = None) -> np.ndarray:
    """Dense CRF mean-field inference.

    Args:
        image: uint8 ``(H, W, 3)`` RGB.
        probs: ``(C, H, W)`` class probabilities (unaries are ``-log p``, clipped at 1e-5).
        iters: mean-field iterations.
        pos_xy_std, pos_w: smoothness (Gaussian) kernel width in px and weight.
        bi_xy_std, bi_rgb_std, bi_w: appearance (bilateral) kernel widths and weight; None = :func:`crf_defaults`.

    Returns:
        ``(C, H, W)`` float32 marginals (sum to 1 over C).
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
    num, height, width = probs.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f'image {image.shape[:2]} and probs {probs.shape[1:]} sizes differ')
    defaults = crf_defaults(height, width)
    bi_xy_std = defaults['bi_xy_std'] if bi_xy_std is None else bi_xy_std
    bi_rgb_std = defaults['bi_rgb_std'] if bi_rgb_std is None else bi_rgb_std
    bi_w = defaults['bi_w'] if bi_w is None else bi_w
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    probs = probs / np.maximum(probs.sum(axis=0, keepdims=True), 1e-12)
    crf = dcrf.DenseCRF2D(width, height, num)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=1e-5)))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.array(image, dtype=np.uint8, order='C'),
                             compat=bi_w)  # a writable copy: pydensecrf refuses read-only buffers
    marginals = np.asarray(crf.inference(iters), dtype=np.float32)
    return marginals.reshape(num, height, width)


# ----------------------------------------------------------------------------------------------------------------
# chaining
# ----------------------------------------------------------------------------------------------------------------
def scores_to_probs(scores: torch.Tensor, power: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Non-negative scores ``(..., C, H, W)`` -> probabilities ``∝ (score + eps)^power`` over C (argmax unchanged)."""
    weights = (scores.float().clamp(min=0) + eps).pow(power)
    return weights / weights.sum(dim=-3, keepdim=True)


def refine_probs(image: np.ndarray, probs: torch.Tensor, steps: Sequence[str], par_kwargs: Optional[dict] = None,
                 crf_kwargs: Optional[dict] = None, par_scale: float = 1.0) -> torch.Tensor:
    """Apply pixel-level refinement steps in the given order.

    Args:
        image: uint8 ``(H, W, 3)``.
        probs: ``(C, H, W)`` probabilities.
        steps: names from :data:`PIXEL_STEPS` ('par', 'crf'), applied in this order (repeats allowed).
        par_kwargs: keyword arguments of :func:`par_refine`.
        crf_kwargs: keyword arguments of :func:`crf_refine`.
        par_scale: run PAR at this fraction of the image size (ToCo uses 0.5 on VOC), result upsampled back.

    Returns:
        ``(C, H, W)`` fp32 probabilities.
    """
    out = probs.float()
    for step in steps:
        if step == 'par':
            out = _par_at_scale(image, out, par_scale, par_kwargs or {})
        elif step == 'crf':
            out = torch.from_numpy(crf_refine(image, out.numpy(), **(crf_kwargs or {})))
        else:
            raise ValueError(f'unknown refinement step {step!r}; pixel steps are {PIXEL_STEPS}')
    return out


def _par_at_scale(image: np.ndarray, probs: torch.Tensor, scale: float, kwargs: dict) -> torch.Tensor:
    img = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    full = probs.shape[-2:]
    probs = probs[None]
    if scale != 1.0:
        size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
        img = F.interpolate(img, size=size, mode='bilinear', align_corners=False)
        probs = F.interpolate(probs, size=size, mode='bilinear', align_corners=False)
    out = par_refine(img, probs, **kwargs)
    if scale != 1.0:
        out = F.interpolate(out, size=full, mode='bilinear', align_corners=False)
    return out[0]
