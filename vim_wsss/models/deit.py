"""DeiT baseline with the same backbone API as :mod:`vim_wsss.models.vim`.

Paper: "Training data-efficient image transformers & distillation through attention", Touvron et al., ICML 2021,
https://arxiv.org/abs/2012.12877. Weights: https://github.com/facebookresearch/deit
(``deit_small_patch16_224-cd65a155.pth``).

A thin subclass of timm's ``VisionTransformer`` (never vendored): the state-dict keys are timm's, which are also the
official DeiT keys. It adds ``cls_index`` / ``grid_size`` / ``num_patches`` / ``patch_tokens`` and
:meth:`DeiT.forward_explain`, which returns the attention probabilities of every block in the autograd graph
(the fused attention kernel is switched off for that call and the input of ``attn_drop`` is recorded).
Registered under our own names (``deit_s_patch16_224`` ...) so timm's ``deit_*`` entrypoints are untouched.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from .checkpoint import PathLike, drop_mismatched_head, load_weights
from .vim import resolve_pretrained_path

__all__ = ['AttnProbe', 'DeiT', 'checkpoint_filter_fn', 'DEIT_MODELS']


class AttnProbe(nn.Dropout):
    """``attn_drop`` replacement that can record its input, the attention probabilities ``(B, heads, L, L)``."""

    def __init__(self, p: float = 0.) -> None:
        super().__init__(p)
        self.recorded: Optional[List[torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recorded is not None:
            self.recorded.append(x)
        return super().forward(x)


class DeiT(VisionTransformer):
    """timm VisionTransformer with a class token at index 0 and the shared vim_wsss backbone API.

    Args:
        img_size, patch_size, embed_dim, depth, num_heads, num_classes, drop_path_rate: as in timm.
        **kwargs: passed to ``timm.models.vision_transformer.VisionTransformer``.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, num_classes: int = 1000, drop_path_rate: float = 0.,
                 **kwargs: Any) -> None:
        kwargs.setdefault('global_pool', 'token')
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, num_classes=num_classes, drop_path_rate=drop_path_rate,
                         class_token=True, **kwargs)
        for block in self.blocks:
            block.attn.attn_drop = AttnProbe(block.attn.attn_drop.p)
        self.cls_index = 0
        self.grid_size: Tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.num_patches = self.patch_embed.num_patches

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Remove the class token: ``(B, L, D)`` -> ``(B, M, D)``."""
        return tokens[:, 1:]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> tokens entering the first block ``(B, L, D)``."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward_explain(self, x: torch.Tensor) -> Dict[str, Any]:
        """Forward pass keeping the residual streams and the attention probabilities in the graph.

        Works for any batch size and under ``torch.no_grad()``. With grad enabled, ``torch.autograd.grad`` of a logit
        w.r.t. ``attn`` or ``residuals`` gives per-image gradients (if nothing upstream requires grad, the
        embedding is made a leaf that does).

        Args:
            x: images ``(B, C, H, W)``.

        Returns:
            dict with ``logits (B, num_classes)``, ``features (B, L, D)`` (after the final norm), ``residuals``: list
            over blocks of the tokens entering block l ``(B, L, D)``, and ``attn``: list over blocks of attention
            probabilities ``(B, heads, L, L)`` (rows sum to 1).
        """
        tokens = self.embed(x)
        if torch.is_grad_enabled() and not tokens.requires_grad:
            tokens = tokens.detach().requires_grad_()
        probes = [block.attn.attn_drop for block in self.blocks]
        fused = [block.attn.fused_attn for block in self.blocks]
        residuals: List[torch.Tensor] = []
        try:
            for block, probe in zip(self.blocks, probes):
                block.attn.fused_attn = False
                probe.recorded = []
            for block in self.blocks:
                residuals.append(tokens)
                tokens = block(tokens)
            attn = [probe.recorded[0] for probe in probes]
        finally:
            for block, probe, was_fused in zip(self.blocks, probes, fused):
                block.attn.fused_attn = was_fused
                probe.recorded = None
        features = self.norm(tokens)
        return dict(logits=self.forward_head(features), features=features, residuals=residuals, attn=attn)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: DeiT) -> Dict[str, torch.Tensor]:
    """Adapt an official DeiT / timm ViT state dict (unwrapped: see :mod:`vim_wsss.models.checkpoint`) to ``model``.

    Resamples ``pos_embed`` (class token at index 0) to the model's patch grid, and drops the head when
    ``num_classes`` differs.
    """
    state_dict = dict(state_dict)
    pos = state_dict.get('pos_embed')
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape != model.pos_embed.shape:
        state_dict['pos_embed'] = resample_abs_pos_embed(pos, new_size=list(model.grid_size), num_prefix_tokens=1,
                                                         antialias=False)  # plain bicubic, as DeiT's own code
    return drop_mismatched_head(state_dict, model)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    cfg = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=.875, interpolation='bicubic',
               fixed_input_size=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               first_conv='patch_embed.proj', classifier='head', paper_ids='arXiv:2012.12877')
    return dict(cfg, **kwargs)


default_cfgs = generate_default_cfgs({
    'deit_s_patch16_224': _cfg(
        origin_url='https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth',
        notes=('official file: deit_small_patch16_224-cd65a155.pth',)),
    'deit_test_patch8_64': _cfg(input_size=(3, 64, 64)),
    'deit_mini_patch8_64': _cfg(input_size=(3, 64, 64)),
})

CHECKPOINT_FILES = {'deit_s_patch16_224': 'deit_small_patch16_224-cd65a155.pth'}


def _create_deit(variant: str, pretrained: Union[bool, PathLike, None] = False, **kwargs: Any) -> DeiT:
    path = resolve_pretrained_path(variant, kwargs.pop('checkpoint_path', None) or pretrained, CHECKPOINT_FILES)
    out_indices = kwargs.pop('out_indices', 3)
    model = build_model_with_cfg(DeiT, variant, pretrained=False,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)
    if path is not None:  # features_only wraps the model in a timm FeatureGetterNet (model.model)
        load_weights(model if isinstance(model, DeiT) else model.model, path, new_head=True)
    return model


@register_model
def deit_s_patch16_224(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> DeiT:
    """DeiT-S (D=384, 12 blocks, 6 heads), the WSSS baseline of the paper."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_deit('deit_s_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def deit_test_patch8_64(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> DeiT:
    """Tiny CI variant: D=32, 2 blocks, 2 heads, 64x64 input, patch 8."""
    args = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    return _create_deit('deit_test_patch8_64', pretrained, **dict(args, **kwargs))


@register_model
def deit_mini_patch8_64(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> DeiT:
    """Demo variant paired with vim_mini_patch8_64: D=64, 4 blocks, 2 heads, 64x64, patch 8; about 0.21M parameters."""
    args = dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2)
    return _create_deit('deit_mini_patch8_64', pretrained, **dict(args, **kwargs))


DEIT_MODELS = ('deit_s_patch16_224', 'deit_test_patch8_64', 'deit_mini_patch8_64')
