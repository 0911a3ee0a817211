"""Vision Mamba (Vim) in pure PyTorch, loading the official middle-class-token checkpoints strictly.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
Zhu et al., ICML 2024, https://arxiv.org/abs/2401.09417. Official code and weights: https://github.com/hustvl/Vim
(``vim/models_mamba.py`` and the ``mamba-1p1p1`` fork of https://github.com/state-spaces/mamba).

This is the released configuration only: patch 16 (stride 16, or 8 for the fine-tuned "+" models), a class token
inserted at index ``M // 2`` before the absolute position embedding is added, bidirectional "v2" mixers (shared
``in_proj`` / ``out_proj`` without bias, separate conv1d / x_proj / dt_proj / A_log / D for the backward scan,
output ``out_proj((y_f + flip(y_b)) / 2)``), RMSNorm (eps 1e-5, no bias) with the fused add+norm semantics of Vim
(the residual stream is kept in fp32), final ``norm_f`` and a linear head on the class token. Parameter names match
the official state dict, so ``ckpt['model']`` loads strictly. The selective scan runs through
:func:`vim_wsss.ops.selective_scan` (reference, fast pure-PyTorch, compiled CPU, or mamba-ssm's CUDA kernel).

Contract with :mod:`vim_wsss.explain`: :meth:`BiMambaMixer.branch_inputs` is the one place that computes the scan's
inputs; :meth:`VisionMamba.forward_explain` returns the residual streams entering each block and every block's
:class:`ScanInputs`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, lecun_normal_, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from vim_wsss.ops import causal_conv1d_silu, selective_scan

from .checkpoint import CheckpointError, drop_mismatched_head, load_weights

__all__ = [
    'ScanInputs', 'RMSNorm', 'PatchEmbed', 'BiMambaMixer', 'Block', 'VisionMamba', 'CheckpointError',
    'checkpoint_filter_fn', 'VIM_MODELS',
]

PathLike = Union[str, 'os.PathLike[str]']


@dataclass
class ScanInputs:
    """Inputs of one direction's selective scan, channels first, fp32 (flipped order for direction 'b').

    Attributes:
        x: ``(B, E, L)`` in_proj x-part, before the conv.
        z: ``(B, E, L)`` gate input.
        conv_out: ``(B, E, L)`` causal depthwise conv output before SiLU, bias included.
        u: ``(B, E, L)`` SiLU(conv_out), the scan input.
        delta: ``(B, E, L)`` softplus(dt_proj(x_dbl) + dt bias).
        A: ``(E, N)`` -exp(A_log).
        B: ``(B, N, L)``.
        C: ``(B, N, L)``.
        D: ``(E,)`` skip weights.
        conv_weight: ``(E, K)`` depthwise conv weights (tap K-1 multiplies the current token).
        conv_bias: ``(E,)``.
    """
    x: torch.Tensor
    z: torch.Tensor
    conv_out: torch.Tensor
    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    conv_weight: torch.Tensor
    conv_bias: torch.Tensor


class _Branch(NamedTuple):
    """One direction's scan inputs in the original token order, channels-last fp32 (see ``BiMambaMixer._branch``)."""
    x: torch.Tensor
    z: torch.Tensor
    conv_out: torch.Tensor
    u: torch.Tensor
    dt: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """``(B, L, X)`` -> ``(B, X, L)`` view."""
    return x.transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm without bias: ``x / sqrt(mean(x^2) + eps) * weight``, computed in fp32.

    The output has the weight's dtype (fp32 unless the model was cast).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last dimension. ``x``: ``(..., D)`` -> ``(..., D)``."""
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(self.weight.dtype)


class PatchEmbed(nn.Module):
    """Image to patch tokens with a (possibly overlapping) strided conv; the official ``patch_embed.proj``."""

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, stride: int = 16,
                 in_chans: int = 3, embed_dim: int = 192) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = stride
        self.grid_size = tuple((s - p) // stride + 1 for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` with (H, W) = img_size -> ``(B, M, D)``, patches in row-major order."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f'input size {tuple(x.shape[-2:])} does not match the model img_size {self.img_size}; '
                             f'build the model with img_size={tuple(x.shape[-2:])} (pos_embed is resampled on load).')
        return self.proj(x).flatten(2).transpose(1, 2)


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer ("bimamba v2" of Vim) with the official parameter names.

    Args:
        d_model: token width D.
        d_state: SSM state size N.
        d_conv: causal depthwise conv width K.
        expand: inner width E = expand * D.
        dt_rank: low-rank width R of the step-size projection; 'auto' = ceil(D / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: Mamba step-size initialisation (log-uniform dt in [min, max]).
        a_init_scale: A is initialised to ``-a_init_scale * (1..N)`` (Mamba's S4D-real init is 1). Only the
            initialisation: checkpoints load their own A_log.

    Attributes:
        conv_impl: implementation of the causal conv + SiLU, :func:`vim_wsss.ops.causal_conv1d_silu`'s ``impl``
            ('auto': compiled on CPU when numba imports, else pure PyTorch; 'ref' forces the PyTorch formula).
    """

    conv_impl = 'auto'

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Union[int, str] = 'auto', dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, dt_scale: float = 1.0, a_init_scale: float = 1.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == 'auto' else int(dt_rank)
        E, R, N = self.d_inner, self.dt_rank, d_state
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.conv1d_b = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj_b = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj_b = nn.Linear(R, E, bias=True)
        self.A_b_log = nn.Parameter(torch.empty(E, N))
        self.D_b = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self.dt_init = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, dt_scale=dt_scale)
        self.a_init_scale = a_init_scale
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba initialisation of both directions: A_log = log(a_init_scale * (1..N)), D = 1, dt_proj weight
        uniform(+-R^-0.5 scale), dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]."""
        cfg = self.dt_init
        std = self.dt_rank ** -0.5 * cfg['dt_scale']
        for dt_proj, A_log, D in ((self.dt_proj, self.A_log, self.D), (self.dt_proj_b, self.A_b_log, self.D_b)):
            nn.init.uniform_(dt_proj.weight, -std, std)
            log_dt = torch.rand(self.d_inner) * (math.log(cfg['dt_max']) - math.log(cfg['dt_min']))
            dt = torch.exp(log_dt + math.log(cfg['dt_min'])).clamp(min=cfg['dt_init_floor'])
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A = self.a_init_scale * torch.arange(1, self.d_state + 1, dtype=torch.float32)
            A_log.copy_(torch.log(A).expand(self.d_inner, -1))
            D.fill_(1.0)

    def _branch_params(self, direction: str) -> Tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        if direction == 'f':
            return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D
        if direction == 'b':
            return self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        raise ValueError(f"direction must be 'f' or 'b', got {direction!r}")

    def _split(self, xz: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """in_proj output ``(B, L, 2E)`` -> contiguous fp32 x, z ``(B, L, E)``, made once for both directions (the
        compiled conv and scan would otherwise each copy their strided half)."""
        x, z = xz.float().split([self.d_inner, self.d_inner], dim=-1)
        return x.contiguous(), z.contiguous()

    def _branch(self, x: torch.Tensor, z: torch.Tensor, direction: str) -> _Branch:
        """One direction's scan inputs in the original token order, channels-last, fp32.

        Args:
            x, z: the two halves of in_proj's output, ``(B, L, E)`` each (see :meth:`_split`).
            direction: 'f' (causal conv) or 'b' (the backward scan's conv, anti-causal in the original order: the
                causal conv of the flipped sequence, flipped back).

        Returns:
            :class:`_Branch`; ``x, z, conv_out, u, dt`` ``(B, L, E)``, ``B, C`` ``(B, L, N)``.
        """
        conv, x_proj, dt_proj, _, _ = self._branch_params(direction)
        R, N = self.dt_rank, self.d_state
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = conv.weight.float()[:, 0]  # (E, K), tap K-1 is the current token of the scan order
            conv_out, u = causal_conv1d_silu(x, weight, conv.bias.float(), reverse=direction == 'b',
                                             impl=self.conv_impl)
            dt, B, C = F.linear(u, x_proj.weight.float()).split([R, N, N], dim=-1)
            dt = F.linear(dt, dt_proj.weight.float())  # (B, L, E), bias added inside the scan
        return _Branch(x=x, z=z, conv_out=conv_out, u=u, dt=dt, B=B, C=C)

    def _scan_inputs(self, br: _Branch, direction: str) -> ScanInputs:
        """:class:`ScanInputs` (channels first, flipped token order for 'b') of a :class:`_Branch`."""
        conv, _, dt_proj, A_log, D = self._branch_params(direction)
        seq = {k: _channels_first(v.flip(1) if direction == 'b' else v) for k, v in br._asdict().items()}
        delta = seq.pop('dt') + dt_proj.bias.float()[:, None]
        return ScanInputs(**seq, delta=F.softplus(delta), A=-torch.exp(A_log.float()), D=D.float(),
                          conv_weight=conv.weight.float()[:, 0], conv_bias=conv.bias.float())

    def _scan_branch(self, br: _Branch, direction: str) -> torch.Tensor:
        """``(C.h + D u) * SiLU(z)`` of one direction in the original token order, ``(B, E, L)`` fp32: softplus(dt +
        bias) is done by the scan, and the backward direction scans in reverse instead of flipping tensors."""
        _, _, dt_proj, A_log, D = self._branch_params(direction)
        u, dt, B, C, z = (_channels_first(v) for v in (br.u, br.dt, br.B, br.C, br.z))
        return selective_scan(u, dt, -torch.exp(A_log.float()), B, C, D.float(), z, delta_bias=dt_proj.bias.float(),
                              delta_softplus=True, reverse=direction == 'b')

    def branch_inputs(self, hidden: torch.Tensor, direction: str) -> ScanInputs:
        """Compute one direction's scan inputs.

        Args:
            hidden: normalised tokens ``(B, L, D)``.
            direction: 'f' (forward scan) or 'b' (backward scan; every returned tensor is in flipped token order).

        Returns:
            :class:`ScanInputs` (fp32).
        """
        return self._scan_inputs(self._branch(*self._split(self.in_proj(hidden)), direction), direction)

    @staticmethod
    def scan(inputs: ScanInputs) -> torch.Tensor:
        """``y = (C.h + D u) * SiLU(z)`` for one direction, ``(B, E, L)`` fp32."""
        return selective_scan(inputs.u, inputs.delta, inputs.A, inputs.B, inputs.C, inputs.D, inputs.z)

    def forward(self, hidden: torch.Tensor, return_internals: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, ScanInputs]]]:
        """Mix tokens in both directions.

        Args:
            hidden: normalised tokens ``(B, L, D)``.
            return_internals: also return ``{'f': ScanInputs, 'b': ScanInputs}``.

        Returns:
            ``(B, L, D)`` output in ``out_proj``'s dtype, or ``(output, internals)``.
        """
        x, z = self._split(self.in_proj(hidden))
        branches = {d: self._branch(x, z, d) for d in ('f', 'b')}
        y = (self._scan_branch(branches['f'], 'f') + self._scan_branch(branches['b'], 'b')).mul_(0.5)
        out = self.out_proj(y.transpose(1, 2).to(self.out_proj.weight.dtype))
        if return_internals:
            return out, {d: self._scan_inputs(br, d) for d, br in branches.items()}
        return out


class Block(nn.Module):
    """Vim block with fused add+norm semantics: ``residual = residual + hidden; hidden = mixer(norm(residual))``."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, norm_eps: float = 1e-5,
                 drop_path: float = 0., dt_min: float = 1e-3, dt_max: float = 1e-1, a_init_scale: float = 1.0
                 ) -> None:
        super().__init__()
        self.mixer = BiMambaMixer(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_min=dt_min, dt_max=dt_max,
                                  a_init_scale=a_init_scale)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def add_norm(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add the previous mixer output to the fp32 residual stream and normalise.

        Args:
            hidden: previous mixer output ``(B, L, D)`` (the embeddings for the first block).
            residual: fp32 residual stream ``(B, L, D)``, None for the first block.

        Returns:
            (normalised tokens, residual stream entering this block's mixer), both ``(B, L, D)``.
        """
        if residual is None:
            residual = hidden.float()
        else:
            residual = residual + self.drop_path(hidden).float()
        return self.norm(residual), residual

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (mixer output, residual stream), both ``(B, L, D)``."""
        normed, residual = self.add_norm(hidden, residual)
        return self.mixer(normed), residual


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------
class VisionMamba(nn.Module):
    """Vision Mamba with a middle class token (the released Vim models).

    Args:
        img_size: input size (int or (H, W)); other sizes than the checkpoint's resample pos_embed on load.
        patch_size: patch size (16 for the released models).
        stride: patch stride (16, or 8 for the fine-tuned stride-8 models).
        in_chans: input channels.
        num_classes: classifier outputs (0 = no head).
        embed_dim: token width D.
        depth: number of blocks.
        d_state, d_conv, expand: mixer sizes (N, K, E / D).
        drop_rate: dropout after adding the position embedding.
        drop_path_rate: stochastic depth; block i > 0 uses linspace(0, rate, depth)[i - 1] (the official schedule,
            block 0 has nothing to drop), the last mixer output uses ``drop_path_rate``.
        norm_eps: RMSNorm epsilon.
        dt_min, dt_max, a_init_scale: initialisation of the selective scan's step sizes and A (see
            :class:`BiMambaMixer`; the defaults are Mamba's). Larger steps with a smaller A start training with
            stronger long-range mixing, which small models trained briefly from scratch need.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, stride: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 192, depth: int = 24,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, drop_rate: float = 0.,
                 drop_path_rate: float = 0., norm_eps: float = 1e-5, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 a_init_scale: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.depth = depth
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        self.grid_size: Tuple[int, int] = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.cls_index = self.num_patches // 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList([
            Block(embed_dim, d_state=d_state, d_conv=d_conv, expand=expand, norm_eps=norm_eps, drop_path=rates[i],
                  dt_min=dt_min, dt_max=dt_max, a_init_scale=a_init_scale)
            for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f'layers.{i}', num_chs=embed_dim, reduction=stride) for i in range(depth)]
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official Vim initialisation (mixers keep their Mamba init of A_log, D and dt)."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight.div_(math.sqrt(self.depth))

    # --- timm-style helpers -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Full names of parameters excluded from weight decay (embeddings, A_log, A_b_log, D, D_b)."""
        names = {'pos_embed', 'cls_token'}
        for i in range(len(self.layers)):
            names.update(f'layers.{i}.mixer.{p}' for p in ('A_log', 'A_b_log', 'D', 'D_b'))
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm convention)."""
        return dict(stem=r'^cls_token|^pos_embed|^patch_embed',
                    blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute blocks in backward to save memory (training only)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0 = none)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)

    # --- forward ------------------------------------------------------------------------------------------------
    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Remove the class token: ``(B, L, D)`` -> ``(B, M, D)`` in row-major patch order."""
        c = self.cls_index
        return torch.cat([tokens[:, :c], tokens[:, c + 1:]], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token inserted at ``cls_index`` plus pos_embed: ``(B, L, D)``."""
        tokens = self.patch_embed(x)
        c = self.cls_index
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :c], cls, tokens[:, c:]], dim=1)
        return self.pos_drop(tokens + self.pos_embed)

    def _final_norm(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm_f(residual + self.drop_path(hidden).float())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> all tokens after ``norm_f`` ``(B, L, D)`` (class token at ``cls_index``)."""
        hidden, residual = self.embed(x), None
        for layer in self.layers:
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        return self._final_norm(hidden, residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(B, L, D)`` -> logits ``(B, num_classes)`` from the class token (or its features)."""
        cls = x[:, self.cls_index]
        return cls if pre_logits else self.head(cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def forward_explain(self, x: torch.Tensor) -> Dict[str, Any]:
        """Forward pass that keeps what the implicit-attention attributions need.

        Works for any batch size and under ``torch.no_grad()``. With grad enabled, every residual is in the graph
        (if nothing upstream requires grad, the embedding is made a leaf that does), so
        ``torch.autograd.grad(logits[:, k].sum(), residuals)`` gives per-image gradients.

        Args:
            x: images ``(B, C, H, W)``.

        Returns:
            dict with ``logits (B, num_classes)``, ``features (B, L, D)`` (after norm_f), ``residuals``: list over
            blocks of the fp32 residual stream entering block l ``(B, L, D)``, and ``internals``: list over blocks of
            ``{'f': ScanInputs, 'b': ScanInputs}``.
        """
        hidden, residual = self.embed(x), None
        if torch.is_grad_enabled() and not hidden.requires_grad:
            hidden = hidden.detach().float().requires_grad_()
        residuals, internals = [], []
        for layer in self.layers:
            normed, residual = layer.add_norm(hidden, residual)
            residuals.append(residual)
            hidden, inner = layer.mixer(normed, return_internals=True)
            internals.append(inner)
        features = self._final_norm(hidden, residual)
        return dict(logits=self.forward_head(features), features=features, residuals=residuals,
                    internals=internals)

    def _to_nchw(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = self.patch_tokens(tokens)
        return patches.reshape(patches.shape[0], *self.grid_size, -1).permute(0, 3, 1, 2).contiguous()

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              stop_early: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Residual stream after selected blocks (timm semantics).

        Args:
            x: images ``(B, C, H, W)``.
            indices: None = all blocks, int n = last n blocks, list = those block indices (negative from the end).
            norm: apply ``norm_f`` to each intermediate.
            output_fmt: 'NCHW' -> ``(B, D, gh, gw)`` without the class token; 'NLC' -> ``(B, L, D)`` with it.
            intermediates_only: return only the list of intermediates.
            stop_early: stop after the last requested block (only with ``intermediates_only``).

        Returns:
            ``(final tokens (B, L, D), intermediates)`` or the list of intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        take = set(take)
        last = max_index if (stop_early and intermediates_only) else len(self.layers) - 1
        streams: List[torch.Tensor] = []
        hidden, residual = self.embed(x), None
        for i, layer in enumerate(self.layers[:last + 1]):
            normed, residual = layer.add_norm(hidden, residual)
            if i - 1 in take:  # the stream entering block i is the output of block i - 1
                streams.append(residual)
            hidden = layer.mixer(normed)
        final_stream = residual + self.drop_path(hidden).float()
        if last in take:
            streams.append(final_stream)
        out = [self.norm_f(s) if norm else s for s in streams]
        if output_fmt == 'NCHW':
            out = [self._to_nchw(s) for s in out]
        if intermediates_only:
            return out
        return self.norm_f(final_stream), out

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop blocks after the last requested index (timm API)."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------
def resample_pos_embed_mid_cls(pos_embed: torch.Tensor, new_grid: Tuple[int, int],
                               old_grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Resample a middle-class-token position embedding to another patch grid.

    The class entry sits at index M // 2 (not 0): it is removed, the M patch entries are reshaped to the old grid
    (square if not given), resized bicubically (``align_corners=False``, no antialias, like the official fine-tuning
    code), and the class entry is re-inserted at M' // 2.

    Args:
        pos_embed: ``(1, M + 1, D)``.
        new_grid: (gh', gw').
        old_grid: (gh, gw), default square.

    Returns:
        ``(1, M' + 1, D)``; the input itself when the grid is unchanged.
    """
    num_old = pos_embed.shape[1] - 1
    if old_grid is None:
        side = int(math.isqrt(num_old))
        if side * side != num_old:
            raise CheckpointError(f'pos_embed has {num_old} patch entries, not a square grid; pass old_grid.')
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    old_cls = num_old // 2
    cls = pos_embed[:, old_cls:old_cls + 1]
    patches = torch.cat([pos_embed[:, :old_cls], pos_embed[:, old_cls + 1:]], dim=1)
    patches = resample_abs_pos_embed(patches, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=0,
                                     antialias=False)  # plain bicubic, as Vim's and DeiT's fine-tuning code
    new_cls = patches.shape[1] // 2
    return torch.cat([patches[:, :new_cls], cls, patches[:, new_cls:]], dim=1)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: 'VisionMamba') -> Dict[str, torch.Tensor]:
    """Adapt an official Vim state dict (unwrapped: see :mod:`vim_wsss.models.checkpoint`) to ``model``.

    Resamples ``pos_embed`` around the middle class token when the patch grid differs, and drops the head when
    ``num_classes`` differs (the model's freshly initialised head is kept).

    Args:
        state_dict: official key names.
        model: the target model.

    Returns:
        A state dict with the official key names.
    """
    state_dict = dict(state_dict)
    pos = state_dict.get('pos_embed')
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape != model.pos_embed.shape:
        state_dict['pos_embed'] = resample_pos_embed_mid_cls(pos, model.grid_size)
    return drop_mismatched_head(state_dict, model)


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
def _cfg(**kwargs: Any) -> Dict[str, Any]:
    cfg = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=.875, interpolation='bicubic',
               fixed_input_size=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               first_conv='patch_embed.proj', classifier='head', paper_ids='arXiv:2401.09417')
    return dict(cfg, **kwargs)


def _hf(repo: str, file: str) -> Dict[str, Any]:
    return dict(origin_url=f'https://huggingface.co/hustvl/{repo}', notes=(f'official file: {file}',))


default_cfgs = generate_default_cfgs({
    'vim_tiny_patch16_224': _cfg(**_hf('Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth')),
    'vim_small_patch16_224': _cfg(**_hf('Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth')),
    'vim_base_patch16_224': _cfg(**_hf('Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth')),
    'vim_tiny_patch16_stride8_224': _cfg(**_hf('Vim-tiny-midclstok', 'vim_t_midclstok_ft_78p3acc.pth')),
    'vim_small_patch16_stride8_224': _cfg(**_hf('Vim-small-midclstok', 'vim_s_midclstok_ft_81p6acc.pth')),
    'vim_test_patch8_64': _cfg(input_size=(3, 64, 64)),
    'vim_mini_patch8_64': _cfg(input_size=(3, 64, 64)),
})

#: Official checkpoint file names, looked up in $VIM_WSSS_CHECKPOINTS (default ./checkpoints) for pretrained=True.
CHECKPOINT_FILES = {
    'vim_tiny_patch16_224': 'vim_t_midclstok_76p1acc.pth',
    'vim_small_patch16_224': 'vim_s_midclstok_80p5acc.pth',
    'vim_base_patch16_224': 'vim_b_midclstok_81p9acc.pth',
    'vim_tiny_patch16_stride8_224': 'vim_t_midclstok_ft_78p3acc.pth',
    'vim_small_patch16_stride8_224': 'vim_s_midclstok_ft_81p6acc.pth',
}


def resolve_pretrained_path(variant: str, pretrained: Union[bool, PathLike, None],
                            files: Dict[str, str]) -> Optional[str]:
    """Turn ``pretrained`` (False/None, True, or a path) into a local file path or None.

    True means the official file for ``variant`` in ``$VIM_WSSS_CHECKPOINTS`` (default ``./checkpoints``); nothing
    is ever downloaded.
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        if variant not in files:
            raise ValueError(f'{variant} has no official checkpoint; pass a local .pth path as pretrained=...')
        folder = os.environ.get('VIM_WSSS_CHECKPOINTS', 'checkpoints')
        path = os.path.join(folder, files[variant])
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found: download {files[variant]} as described in '
                                    f'checkpoints/README.md and put it in {folder}/ (or set VIM_WSSS_CHECKPOINTS), '
                                    'or pass pretrained=<path>.')
        return path
    return os.fspath(pretrained)


def _create_vim(variant: str, pretrained: Union[bool, PathLike, None] = False, **kwargs: Any) -> VisionMamba:
    path = resolve_pretrained_path(variant, kwargs.pop('checkpoint_path', None) or pretrained, CHECKPOINT_FILES)
    out_indices = kwargs.pop('out_indices', 3)
    model = build_model_with_cfg(VisionMamba, variant, pretrained=False,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)
    if path is not None:  # features_only wraps the model in a timm FeatureGetterNet (model.model)
        load_weights(model if isinstance(model, VisionMamba) else model.model, path, new_head=True)
    return model


@register_model
def vim_tiny_patch16_224(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti (D=192, 24 blocks), 76.1% top-1."""
    return _create_vim('vim_tiny_patch16_224', pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_model
def vim_small_patch16_224(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """Vim-S (D=384, 24 blocks), 80.5% top-1; the model of both explainability papers."""
    return _create_vim('vim_small_patch16_224', pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vim_base_patch16_224(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """Vim-B (D=768, 24 blocks), 81.9% top-1."""
    return _create_vim('vim_base_patch16_224', pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti+ (stride 8: 27x27 patches, L=730), 78.3% top-1."""
    args = dict(embed_dim=192, depth=24, stride=8)
    return _create_vim('vim_tiny_patch16_stride8_224', pretrained, **dict(args, **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """Vim-S+ (stride 8: 27x27 patches, L=730), 81.6% top-1."""
    args = dict(embed_dim=384, depth=24, stride=8)
    return _create_vim('vim_small_patch16_stride8_224', pretrained, **dict(args, **kwargs))


@register_model
def vim_test_patch8_64(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """Tiny CI variant: D=32, 2 blocks, 64x64 input, patch 8 (8x8 grid, L=65)."""
    args = dict(img_size=64, patch_size=8, stride=8, embed_dim=32, depth=2)
    return _create_vim('vim_test_patch8_64', pretrained, **dict(args, **kwargs))


@register_model
def vim_mini_patch8_64(pretrained: Union[bool, PathLike] = False, **kwargs: Any) -> VisionMamba:
    """CPU demo variant: D=64, 6 blocks, N=8, 64x64 input, patch 8 (8x8 grid, L=65); about 0.23M parameters.

    Trained from scratch for a few hundred steps, Mamba's default init (dt in [1e-3, 1e-1], A = -(1..N)) leaves the
    scan nearly unused (the conv and the D skip carry the signal) and the relevance maps only see tokens next to the
    middle class token; larger steps and a 30x smaller A (slow decay) make every token reachable from the start.
    """
    args = dict(img_size=64, patch_size=8, stride=8, embed_dim=64, depth=6, d_state=8, dt_min=0.05, dt_max=0.3,
                a_init_scale=0.03)
    return _create_vim('vim_mini_patch8_64', pretrained, **dict(args, **kwargs))


VIM_MODELS = ('vim_tiny_patch16_224', 'vim_small_patch16_224', 'vim_base_patch16_224', 'vim_tiny_patch16_stride8_224',
              'vim_small_patch16_stride8_224', 'vim_test_patch8_64', 'vim_mini_patch8_64')
