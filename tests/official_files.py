"""Checkpoint files as the official releases ship them, with random tensors (no download possible here).

Key names and shapes come from written tables (docs: implicit-attention.md section 6.2 for Vim, timm / DeiT for
DeiT), not from our models, and the files are wrapped as the releases save them:

* Vim (hustvl/Vim ``main.py``): ``model``, ``optimizer`` (a real AdamW state dict), ``lr_scheduler`` (timm-style),
  ``epoch``, ``model_ema``, ``scaler`` and ``args`` as an ``argparse.Namespace``.
* DeiT (facebookresearch/deit release files): ``{'model': state_dict}``.

Values are distinctive (not any model's initialisation), so a test can tell the file's weights from a re-init.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, Tuple

import torch


def _randn(shapes: Dict[str, Tuple[int, ...]], seed: int, scale: float) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale + 0.1 for k, s in shapes.items()}


def official_vim_state_dict(dim, depth=24, num_patches=196, num_classes=1000, patch=16, d_state=16, d_conv=4,
                            seed=0, scale=0.5) -> Dict[str, torch.Tensor]:
    """Random tensors (``0.1 + scale * N(0, 1)``) under the official Vim key names and shapes (E = 2D, R = ceil(D/16))."""
    E, R, N = 2 * dim, math.ceil(dim / 16), d_state
    shapes = {'patch_embed.proj.weight': (dim, 3, patch, patch), 'patch_embed.proj.bias': (dim,),
              'cls_token': (1, 1, dim), 'pos_embed': (1, num_patches + 1, dim), 'norm_f.weight': (dim,),
              'head.weight': (num_classes, dim), 'head.bias': (num_classes,)}
    for i in range(depth):
        for suffix in ('', '_b'):
            shapes.update({f'layers.{i}.mixer.conv1d{suffix}.weight': (E, 1, d_conv),
                           f'layers.{i}.mixer.conv1d{suffix}.bias': (E,),
                           f'layers.{i}.mixer.x_proj{suffix}.weight': (R + 2 * N, E),
                           f'layers.{i}.mixer.dt_proj{suffix}.weight': (E, R),
                           f'layers.{i}.mixer.dt_proj{suffix}.bias': (E,)})
        shapes.update({f'layers.{i}.mixer.in_proj.weight': (2 * E, dim), f'layers.{i}.mixer.A_log': (E, N),
                       f'layers.{i}.mixer.A_b_log': (E, N), f'layers.{i}.mixer.D': (E,), f'layers.{i}.mixer.D_b': (E,),
                       f'layers.{i}.mixer.out_proj.weight': (dim, E), f'layers.{i}.norm.weight': (dim,)})
    return _randn(shapes, seed, scale)


def official_deit_state_dict(dim, depth=12, heads=6, num_patches=196, num_classes=1000, patch=16, mlp_ratio=4,
                             seed=0, scale=0.5) -> Dict[str, torch.Tensor]:
    """Random tensors under the DeiT release's (= timm's) key names and shapes; ``heads`` only fixes D % heads."""
    assert dim % heads == 0
    hidden = dim * mlp_ratio
    shapes = {'cls_token': (1, 1, dim), 'pos_embed': (1, num_patches + 1, dim),
              'patch_embed.proj.weight': (dim, 3, patch, patch), 'patch_embed.proj.bias': (dim,),
              'norm.weight': (dim,), 'norm.bias': (dim,), 'head.weight': (num_classes, dim),
              'head.bias': (num_classes,)}
    for i in range(depth):
        b = f'blocks.{i}.'
        shapes.update({b + 'norm1.weight': (dim,), b + 'norm1.bias': (dim,), b + 'attn.qkv.weight': (3 * dim, dim),
                       b + 'attn.qkv.bias': (3 * dim,), b + 'attn.proj.weight': (dim, dim), b + 'attn.proj.bias': (dim,),
                       b + 'norm2.weight': (dim,), b + 'norm2.bias': (dim,), b + 'mlp.fc1.weight': (hidden, dim),
                       b + 'mlp.fc1.bias': (hidden,), b + 'mlp.fc2.weight': (dim, hidden), b + 'mlp.fc2.bias': (dim,)})
    return _randn(shapes, seed, scale)


def _adamw_state(state_dict: Dict[str, torch.Tensor]) -> dict:
    """A real AdamW state dict after one step over (small stand-ins of) the model's parameters."""
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(min(4, len(state_dict)))]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


def save_official_vim(path: Path, state_dict: Dict[str, torch.Tensor], **args) -> Path:
    """Save like hustvl/Vim ``main.py``: model, optimizer, lr_scheduler, epoch, model_ema, scaler, args."""
    namespace = argparse.Namespace(model='vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_'
                                         'midclstok_div2', drop_path=0.05, lr=5e-4, output_dir='./output/vim_s',
                                         data_set='IMNET', input_size=224, if_amp=True, **args)
    scheduler = {'t_initial': 300, 'lr_min': 1e-5, 'warmup_t': 5, 'warmup_lr_init': 1e-6, 't_in_epochs': True,
                 'noise_range_t': None, 'base_values': [5e-4], 'metric': None}
    torch.save({'model': state_dict, 'optimizer': _adamw_state(state_dict), 'lr_scheduler': scheduler,
                'epoch': 299, 'model_ema': {k: v.clone() for k, v in state_dict.items()},
                'scaler': {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5, 'growth_interval': 2000,
                           '_growth_tracker': 0},
                'args': namespace}, path)
    return Path(path)


def save_official_deit(path: Path, state_dict: Dict[str, torch.Tensor]) -> Path:
    """Save like the DeiT release files: ``{'model': state_dict}``."""
    torch.save({'model': state_dict}, path)
    return Path(path)


class Payload:
    """An object whose unpickling runs a command (what a hostile checkpoint carries)."""

    def __init__(self, marker: Path, via: str = 'subprocess'):
        self.marker, self.via = str(marker), via

    def __reduce__(self):
        import os
        import subprocess

        if self.via == 'os.system':
            return os.system, (f'touch {self.marker}',)
        return subprocess.call, (['touch', self.marker],)


def save_payload(path: Path, marker: Path, state_dict: Dict[str, torch.Tensor], via: str = 'subprocess') -> Path:
    """A checkpoint with real weights plus a payload in ``meta`` (as an mmengine checkpoint would carry meta)."""
    torch.save({'state_dict': state_dict, 'meta': {'note': Payload(marker, via)}}, path)
    return Path(path)
