"""Class relevance maps of ViM (implicit attention) and DeiT (attention) classifiers, batched and per target class.

One entry point, :func:`relevance_maps`, and one function per method (``METHODS[family][name]``) that returns the
relevance of every patch ``(B, K, M)``. All methods run one ``forward_explain`` and, when they need gradients, one
``torch.autograd.grad`` per requested class column on the summed selected logits (per-image gradients are exact
because images in a batch are independent in eval mode). Maths is done in fp32 (autocast off); ``model.eval()`` is
expected.

ViM methods (``implicit-attention.md`` sections 2.3-2.4):

* ``'ours'`` (Zimerman et al., 2025; ``generate_ours`` of UnifiedImplicitAttnRepr): per layer the class-token row of
  the full implicit attention (both directions, gate/conv/SiLU folded in), clamped at 0 and averaged over channels,
  times the min-max-normalised token-wise max of the positive residual-stream gradient, min-max normalised; rolled out
  from ``start_layer`` with the reference's broadcasting (every row of a layer's matrix is that vector, plus I,
  row-normalised), ``R = M_last ... M_start``; the class-token row without the class token.
* ``'transformer_attr'`` (the paper's formula, ``R = prod_l (I + E_c[(grad H_c * H_c)^+])``, section 2.3 "paper vs
  code"; the same Chefer rollout as DeiT's ``'transformer_attr'``): the full implicit-attention matrices of every
  layer from ``start_layer`` (default 0, as DeiT), weighted by the exact gradient of the class logit with respect to
  each entry, ``d logit / d H_c[i, j] = (d logit / d y_c[i]) x_c[j]`` (``y`` the mixer output before ``out_proj``,
  ``x`` the in_proj x-part), clamped, averaged over channels, ``R += cam R``; the class-token row without the class
  token. Costs the full matrices (chunked over channels), not only the class-token rows.
* ``'mamba_attr'`` (Ali et al., 2024; ``generate_mamba_attr``): S6-only rows with their direction merge, clamped,
  min-max over the whole (E x L) tensor, channel mean, times the same gradient term (no re-normalisation), rollout.
  ``ali_index_bug=True`` reproduces their off-by-one row indexing.
* ``'raw_attention'`` (``generate_raw_attn``): S6-only rows min-max normalised per layer, channel mean, averaged
  over layers ``start_layer..``.
* ``'rollout'`` (``generate_rollout``): channel mean of the raw S6-only rows, rollout from ``start_layer``.

DeiT methods (``implicit-attention.md`` section 2.5):

* ``'transformer_attr'`` (Chefer et al., gradient-weighted rollout): ``A_bar = E_h[(grad A * A)^+]``, ``R = I``,
  ``R += A_bar R`` per block from ``start_layer`` (default 0), relevance ``R[0, 1:]``.
* ``'rollout'`` (Abnar & Zuidema): head-mean attention + I, row-normalised, multiplied from ``start_layer``
  (default 0), row 0.
* ``'raw_attention'``: head-mean attention of the class token, averaged over blocks ``start_layer..``
  (default: the last block only, as Chefer's baseline).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .implicit_attention import ali_s6_rows, attention_channel_mean, iter_mamba_attention, resolve_attention_impl

__all__ = [
    'METHODS', 'relevance_maps', 'model_family', 'default_start_layer', 'minmax', 'rollout_from_vectors',
    'rollout_from_matrices', 'patches_to_maps', 'vim_ours', 'vim_transformer_attr', 'vim_mamba_attr',
    'vim_raw_attention', 'vim_rollout', 'deit_transformer_attr', 'deit_rollout', 'deit_raw_attention',
]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def model_family(model: nn.Module) -> str:
    """'vim' or 'deit' (a model with ``layers`` of Mamba blocks, or one with attention ``blocks``)."""
    try:
        from vim_wsss.models import model_family as registered_family
        return registered_family(model)
    except (ImportError, TypeError):
        pass
    if hasattr(model, 'layers') and hasattr(model, 'forward_explain'):
        return 'vim'
    if hasattr(model, 'blocks') and hasattr(model, 'forward_explain'):
        return 'deit'
    raise TypeError(f'{type(model).__name__} is neither a ViM nor a DeiT backbone with forward_explain().')


def _depth(model: nn.Module, family: str) -> int:
    return len(model.layers) if family == 'vim' else len(model.blocks)


def default_start_layer(family: str, method: str, depth: int) -> int:
    """Default first layer: ViM ``round(depth * 15 / 24)`` (15 of 24 as the papers) and 0 for 'transformer_attr';
    DeiT 0, or the last block for 'raw_attention'."""
    if method == 'transformer_attr':
        return 0
    if family == 'vim':
        return min(depth - 1, int(round(depth * 15 / 24)))
    return depth - 1 if method == 'raw_attention' else 0


def _resolve_start(start_layer: Optional[int], family: str, method: str, depth: int) -> int:
    start = default_start_layer(family, method, depth) if start_layer is None else int(start_layer)
    if start < 0:
        start += depth
    if not 0 <= start < depth:
        raise ValueError(f'start_layer {start_layer} out of range for a model with {depth} layers.')
    return start


def minmax(x: torch.Tensor, dims: Sequence[int] = (-1,)) -> torch.Tensor:
    """``(x - min) / (max - min)`` over ``dims`` (per remaining index); a constant slice maps to 0."""
    dims = tuple(dims)
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    return torch.where(span > 0, (x - low) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def rollout_from_vectors(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rollout of per-layer vectors with the reference broadcasting: ``M_l = rownorm(1 v_l^T + I)``.

    Args:
        vectors: per layer ``(B, L)`` (the layers to roll out, first to last).

    Returns:
        ``M_last ... M_first`` ``(B, L, L)``.
    """
    joint = None
    for vec in vectors:
        length = vec.shape[-1]
        mat = vec.float().unsqueeze(1).expand(-1, length, -1) + torch.eye(length, device=vec.device)
        mat = mat / mat.sum(dim=-1, keepdim=True)
        joint = mat if joint is None else torch.bmm(mat, joint)
    return joint


def rollout_from_matrices(matrices: Sequence[torch.Tensor], row_normalize: bool = True) -> torch.Tensor:
    """``prod_l rownorm(A_l + I)`` (Abnar & Zuidema), later layers on the left. ``A_l``: ``(B, L, L)``."""
    joint = None
    for att in matrices:
        mat = att.float() + torch.eye(att.shape[-1], device=att.device)
        if row_normalize:
            mat = mat / mat.sum(dim=-1, keepdim=True)
        joint = mat if joint is None else torch.bmm(mat, joint)
    return joint


def _drop_index(x: torch.Tensor, index: int) -> torch.Tensor:
    """Remove position ``index`` of the last dimension."""
    return torch.cat([x[..., :index], x[..., index + 1:]], dim=-1)


def patches_to_maps(patch_rel: torch.Tensor, grid: Tuple[int, int], out_size: Tuple[int, int],
                    normalize: bool = True) -> torch.Tensor:
    """Patch relevance ``(B, K, M)`` (row-major patches) -> maps ``(B, K, h, w)``.

    Clamp at 0 (before upsampling, as the reference code's ``p.clamp(min=0)`` precedes its ``interpolate``),
    bilinear upsampling (``align_corners=False``), then (``normalize``) min-max per map.
    """
    bsz, num = patch_rel.shape[:2]
    maps = patch_rel.float().clamp(min=0).reshape(bsz * num, 1, *grid)
    maps = F.interpolate(maps, size=tuple(out_size), mode='bilinear', align_corners=False)
    maps = maps.reshape(bsz, num, *out_size)
    return minmax(maps, dims=(-2, -1)) if normalize else maps


def _check_classes(classes: torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    classes = torch.as_tensor(classes)
    if classes.dim() == 1:
        classes = classes.unsqueeze(1)
    if classes.dim() != 2 or classes.shape[0] != batch:
        raise ValueError(f'classes must be (B, K) = ({batch}, K) class indices, got shape {tuple(classes.shape)}.')
    if classes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f'classes must hold integer class indices, got {classes.dtype}.')
    classes = classes.long()
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(f'class indices must be in [0, {num_classes}), got {classes.min()}..{classes.max()}.')
    return classes


def _class_gradients(logits: torch.Tensor, classes: torch.Tensor, wrt: Sequence[torch.Tensor]
                     ) -> List[Tuple[torch.Tensor, ...]]:
    """Per class column k: ``d sum_b logits[b, classes[b, k]] / d wrt`` (per-image gradients)."""
    out = []
    columns = classes.shape[1]
    for k in range(columns):
        with torch.enable_grad():  # the selection must be recorded even if the caller runs under no_grad
            selected = logits.gather(1, classes[:, k:k + 1].to(logits.device)).float().sum()
        grads = torch.autograd.grad(selected, list(wrt), retain_graph=k < columns - 1)
        out.append(tuple(g.float() for g in grads))
    return out


def _grad_weight(grad: torch.Tensor) -> torch.Tensor:
    """The reference's gradient term: token-wise max of the positive residual gradient, min-max over tokens.
    ``(B, L, D)`` -> ``(B, L)``."""
    return minmax(grad.clamp(min=0).amax(dim=-1))


def _explain_forward(model: nn.Module, images: torch.Tensor, need_grad: bool) -> Dict[str, object]:
    with torch.set_grad_enabled(need_grad):
        return model.forward_explain(images)


# ----------------------------------------------------------------------------------------------------------------
# ViM
# ----------------------------------------------------------------------------------------------------------------
def vim_ours(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, start_layer: Optional[int] = None,
             channel_chunk: Optional[int] = None, **_: object) -> torch.Tensor:
    """The unified implicit-attention attribution (``generate_ours``), batched and per class.

    Args:
        model: ViM backbone / classifier with ``forward_explain``.
        images: ``(B, 3, H, W)``.
        classes: ``(B, K)`` target class indices.
        start_layer: first rolled-out layer (default ``round(depth * 15 / 24)``).
        channel_chunk: channels per chunk of the implicit-attention computation.

    Returns:
        Patch relevance ``(B, K, M)`` (class token removed, not clamped).
    """
    depth = _depth(model, 'vim')
    start = _resolve_start(start_layer, 'vim', 'ours', depth)
    out = _explain_forward(model, images, need_grad=True)
    cls = int(model.cls_index)
    attn = [attention_channel_mean(None, None, mode='relu', rows=[cls], internals=out['internals'][layer],
                                   channel_chunk=channel_chunk)[:, 0] for layer in range(start, depth)]  # (B, L)
    result = []
    for grads in _class_gradients(out['logits'], classes, out['residuals'][start:]):
        fused = [minmax(a * _grad_weight(g)) for a, g in zip(attn, grads)]
        joint = rollout_from_vectors(fused)
        result.append(_drop_index(joint[:, cls], cls))
    return torch.stack(result, dim=1)


@contextlib.contextmanager
def _captured_inputs(modules: Sequence[nn.Module]) -> Iterator[List[torch.Tensor]]:
    """Collect the first positional input of each module's next forward call (in call order)."""
    seen: List[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _gradient_weighted_attention(internals: Dict[str, object], grads: torch.Tensor,
                                 channel_chunk: Optional[int], impl: str = 'auto') -> torch.Tensor:
    """``E_c[(d logit / d H_c * H_c)^+]`` of one layer for K classes.

    Args:
        internals: the layer's ``{'f': ScanInputs, 'b': ScanInputs}``.
        grads: ``(B, K, L, E)`` gradient of each class logit with respect to the mixer output before ``out_proj``.
        channel_chunk: channels per chunk of the full matrices (torch path).
        impl: 'torch' (the reference: full matrices channel chunk by channel chunk), 'numba' (the compiled CPU
            kernel of :mod:`vim_wsss.explain.gradcam_numba`, which never stores the matrices) or 'auto' (numba for
            CPU tensors when it imports).

    Returns:
        ``(B, K, L, L)``.
    """
    if resolve_attention_impl(impl, grads.device) == 'numba':
        from .gradcam_numba import gradient_weighted_attention_numba
        return gradient_weighted_attention_numba(internals, grads)
    x = internals['f'].x.detach().float()  # (B, E, L), original token order
    grads = grads.transpose(-1, -2)  # (B, K, E, L)
    bsz, classes, chans, length = grads.shape
    cam = x.new_zeros(bsz, classes, length, length)
    for sl, chunk in iter_mamba_attention(None, None, internals=internals, channel_chunk=channel_chunk):
        weighted = chunk * x[:, sl, None, :]  # H_c[i, j] x_c[j]: (B, e, L, L)
        for k in range(classes):
            cam[:, k] += (weighted * grads[:, k, sl, :, None]).clamp_(min=0).sum(dim=1)
    return cam / chans


def vim_transformer_attr(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
                         start_layer: Optional[int] = None, channel_chunk: Optional[int] = None,
                         impl: str = 'auto', **_: object) -> torch.Tensor:
    """Gradient-weighted rollout of the full implicit attention (the paper's formula, Chefer's rule): ``(B, K, M)``.

    Args:
        start_layer: first rolled-out layer (default 0).
        channel_chunk: channels per chunk of the full implicit-attention matrices (torch path).
        impl: the per-layer kernel, see :func:`_gradient_weighted_attention` (``ATTENTION_IMPLS``).
        Others: as :func:`vim_ours`.
    """
    depth = _depth(model, 'vim')
    start = _resolve_start(start_layer, 'vim', 'transformer_attr', depth)
    with _captured_inputs([model.layers[i].mixer.out_proj for i in range(start, depth)]) as inner:
        out = _explain_forward(model, images, need_grad=True)
    if len(inner) != depth - start:
        raise RuntimeError(f'expected one out_proj call per mixer of layers {start}..{depth - 1}, got {len(inner)}')
    per_class = _class_gradients(out['logits'], classes, inner)  # K x layers x (B, L, E)
    cls = int(model.cls_index)
    length = inner[0].shape[1]
    joint = torch.eye(length, device=images.device).expand(images.shape[0], classes.shape[1], -1, -1)
    for i, layer in enumerate(range(start, depth)):
        grads = torch.stack([g[i] for g in per_class], dim=1)  # (B, K, L, E)
        cam = _gradient_weighted_attention(out['internals'][layer], grads, channel_chunk, impl)
        joint = joint + cam @ joint
    return _drop_index(joint[:, :, cls], cls)


def _ali_rows(out: Dict[str, object], layers: Sequence[int], cls: int, index_bug: bool) -> List[torch.Tensor]:
    return [ali_s6_rows(out['internals'][layer], cls, index_bug=index_bug) for layer in layers]  # (B, E, L) each


def vim_mamba_attr(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
                   start_layer: Optional[int] = None, ali_index_bug: bool = False, **_: object) -> torch.Tensor:
    """Ali et al.'s Mamba-Attr (``generate_mamba_attr``), batched and per class: ``(B, K, M)``.

    Args:
        ali_index_bug: reproduce the original off-by-one indexing of the S6 rows (default False: correct rows).
        Others: as :func:`vim_ours`.
    """
    depth = _depth(model, 'vim')
    start = _resolve_start(start_layer, 'vim', 'mamba_attr', depth)
    out = _explain_forward(model, images, need_grad=True)
    cls = int(model.cls_index)
    attn = []
    for xai in _ali_rows(out, range(start, depth), cls, ali_index_bug):
        heads = minmax(xai.clamp(min=0), dims=(1, 2))
        attn.append(heads.mean(dim=1))  # (B, L)
    result = []
    for grads in _class_gradients(out['logits'], classes, out['residuals'][start:]):
        fused = [a * _grad_weight(g) for a, g in zip(attn, grads)]
        joint = rollout_from_vectors(fused)
        result.append(_drop_index(joint[:, cls], cls))
    return torch.stack(result, dim=1)


def vim_raw_attention(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
                      start_layer: Optional[int] = None, ali_index_bug: bool = False, **_: object) -> torch.Tensor:
    """Ali et al.'s Raw-Attention (``generate_raw_attn``): class-independent, ``(B, K, M)``."""
    depth = _depth(model, 'vim')
    start = _resolve_start(start_layer, 'vim', 'raw_attention', depth)
    with torch.no_grad():
        out = model.forward_explain(images)
    cls = int(model.cls_index)
    layers = [minmax(xai, dims=(1, 2)).mean(dim=1) for xai in _ali_rows(out, range(start, depth), cls, ali_index_bug)]
    rel = _drop_index(torch.stack(layers, 0).mean(0), cls)
    return rel.unsqueeze(1).expand(-1, classes.shape[1], -1)


def vim_rollout(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, start_layer: Optional[int] = None,
                ali_index_bug: bool = False, **_: object) -> torch.Tensor:
    """Ali et al.'s Attn-Rollout (``generate_rollout``): class-independent, ``(B, K, M)``."""
    depth = _depth(model, 'vim')
    start = _resolve_start(start_layer, 'vim', 'rollout', depth)
    with torch.no_grad():
        out = model.forward_explain(images)
    cls = int(model.cls_index)
    vectors = [xai.mean(dim=1) for xai in _ali_rows(out, range(start, depth), cls, ali_index_bug)]
    rel = _drop_index(rollout_from_vectors(vectors)[:, cls], cls)
    return rel.unsqueeze(1).expand(-1, classes.shape[1], -1)


# ----------------------------------------------------------------------------------------------------------------
# DeiT
# ----------------------------------------------------------------------------------------------------------------
def deit_transformer_attr(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
                          start_layer: Optional[int] = None, **_: object) -> torch.Tensor:
    """Chefer et al.'s gradient-weighted attention rollout, batched and per class: ``(B, K, M)``."""
    depth = _depth(model, 'deit')
    start = _resolve_start(start_layer, 'deit', 'transformer_attr', depth)
    out = _explain_forward(model, images, need_grad=True)
    attn = out['attn'][start:]
    cls = int(model.cls_index)
    result = []
    for grads in _class_gradients(out['logits'], classes, attn):
        length = attn[0].shape[-1]
        joint = torch.eye(length, device=images.device).expand(images.shape[0], -1, -1)
        for att, grad in zip(attn, grads):
            cam = (grad * att.detach().float()).clamp(min=0).mean(dim=1)
            joint = joint + torch.bmm(cam, joint)
        result.append(_drop_index(joint[:, cls], cls))
    return torch.stack(result, dim=1)


def deit_rollout(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
                 start_layer: Optional[int] = None, **_: object) -> torch.Tensor:
    """Attention rollout (head mean + I, row-normalised): class-independent, ``(B, K, M)``."""
    depth = _depth(model, 'deit')
    start = _resolve_start(start_layer, 'deit', 'rollout', depth)
    with torch.no_grad():
        out = model.forward_explain(images)
    cls = int(model.cls_index)
    joint = rollout_from_matrices([a.float().mean(dim=1) for a in out['attn'][start:]])
    rel = _drop_index(joint[:, cls], cls)
    return rel.unsqueeze(1).expand(-1, classes.shape[1], -1)


def deit_raw_attention(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *,
                       start_layer: Optional[int] = None, **_: object) -> torch.Tensor:
    """Head-mean class-token attention averaged over blocks ``start_layer..`` (default the last): ``(B, K, M)``."""
    depth = _depth(model, 'deit')
    start = _resolve_start(start_layer, 'deit', 'raw_attention', depth)
    with torch.no_grad():
        out = model.forward_explain(images)
    cls = int(model.cls_index)
    rows = torch.stack([a.float().mean(dim=1)[:, cls] for a in out['attn'][start:]], 0).mean(0)
    rel = _drop_index(rows, cls)
    return rel.unsqueeze(1).expand(-1, classes.shape[1], -1)


MethodFn = Callable[..., torch.Tensor]

#: Methods per model family; every function maps ``(model, images, classes, *, start_layer, ...)`` to ``(B, K, M)``.
METHODS: Dict[str, Dict[str, MethodFn]] = {
    'vim': {'ours': vim_ours, 'transformer_attr': vim_transformer_attr, 'mamba_attr': vim_mamba_attr,
            'raw_attention': vim_raw_attention, 'rollout': vim_rollout},
    'deit': {'transformer_attr': deit_transformer_attr, 'raw_attention': deit_raw_attention,
             'rollout': deit_rollout},
}


def relevance_maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str, *,
                   start_layer: Optional[int] = None, out_size: Optional[Tuple[int, int]] = None,
                   normalize: bool = True, ali_index_bug: bool = False,
                   channel_chunk: Optional[int] = None, impl: str = 'auto') -> torch.Tensor:
    """Relevance maps of the requested classes.

    Args:
        model: ViM or DeiT backbone/classifier with ``forward_explain`` (in eval mode).
        images: normalised images ``(B, 3, H, W)``.
        classes: ``(B, K)`` class indices (one map per column; a ``(B,)`` tensor means K = 1).
        method: a key of ``METHODS[family]`` ('ours', 'transformer_attr', 'mamba_attr', 'raw_attention', 'rollout'
            for ViM; 'transformer_attr', 'raw_attention', 'rollout' for DeiT).
        start_layer: first layer used (default: ViM ``round(depth * 15 / 24)``, 0 for 'transformer_attr'; DeiT 0,
            last block for raw).
        out_size: (h, w) of the maps (default the image size).
        normalize: min-max each map to [0, 1] (after the clamp at 0); False keeps the clamped values.
        ali_index_bug: ViM Ali et al. methods only: reproduce their off-by-one S6 rows.
        channel_chunk: ViM 'ours' and 'transformer_attr': channels per implicit-attention chunk (memory bound).
        impl: ViM 'transformer_attr': 'auto' (the compiled CPU kernel for CPU tensors when numba imports, else
            torch), 'torch' (full matrices, the reference) or 'numba'.

    Returns:
        ``(B, K, h, w)`` non-negative fp32 maps.
    """
    family = model_family(model)
    if method not in METHODS[family]:
        raise ValueError(f'unknown method {method!r} for {family}; choose one of {sorted(METHODS[family])}.')
    if model.training:
        warnings.warn('relevance_maps: the model is in training mode (dropout / drop-path active); call model.eval().')
    classes = _check_classes(classes, images.shape[0], int(model.num_classes))
    patch_rel = METHODS[family][method](model, images, classes, start_layer=start_layer,
                                        ali_index_bug=ali_index_bug, channel_chunk=channel_chunk, impl=impl)
    size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
    with torch.autocast(device_type=images.device.type, enabled=False):
        return patches_to_maps(patch_rel.detach().float(), tuple(model.grid_size), size, normalize=normalize)
