"""Backbones: Vision Mamba (:mod:`.vim`) and the DeiT baseline (:mod:`.deit`), registered in timm's registry.

Importing this package registers the entrypoints, so ``timm.create_model('vim_small_patch16_224')`` works too.
:func:`create_model` adds local checkpoint loading through :mod:`.checkpoint` (safe unpickling, strict official keys,
pos_embed resampling, head re-initialisation), the one module every checkpoint reader uses.
"""
from __future__ import annotations

import fnmatch
from typing import Any, List, Optional, Union

import timm
import torch.nn as nn

from .checkpoint import CheckpointError, load_weights, model_family, read_checkpoint
from .deit import DEIT_MODELS, DeiT
from .vim import VIM_MODELS, BiMambaMixer, Block, RMSNorm, ScanInputs, VisionMamba

__all__ = [
    'create_model', 'list_models', 'load_weights', 'read_checkpoint', 'model_family', 'VisionMamba', 'DeiT',
    'BiMambaMixer', 'Block', 'RMSNorm', 'ScanInputs', 'CheckpointError', 'VIM_MODELS', 'DEIT_MODELS',
]


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Names of our registered backbones, optionally filtered by a shell-style pattern (e.g. ``'vim_*'``)."""
    names = sorted(VIM_MODELS + DEIT_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create_model(name: str, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> nn.Module:
    """Build a registered backbone, optionally from a local checkpoint.

    Args:
        name: one of :func:`list_models` (e.g. 'vim_small_patch16_224', 'deit_s_patch16_224', 'vim_test_patch8_64').
        pretrained: path to a local ``.pth`` (official Vim / DeiT file or a plain state dict); True = the official
            file in ``$VIM_WSSS_CHECKPOINTS`` (default ``./checkpoints``, see checkpoints/README.md); None/False = none.
            ``checkpoint_path=`` is accepted as an alias.
        **kwargs: model arguments, e.g. ``img_size``, ``num_classes``, ``drop_path_rate``.

    Returns:
        The model (train mode, as timm returns it).
    """
    if name not in list_models():
        raise ValueError(f'unknown backbone {name!r}; choose one of {list_models()}')
    checkpoint_path = kwargs.pop('checkpoint_path', None)
    if pretrained is not None and pretrained is not False and checkpoint_path is not None:
        raise ValueError('pass either pretrained=<path> or checkpoint_path=<path>, not both')
    source = checkpoint_path if checkpoint_path is not None else pretrained
    # our entrypoints accept a path (or True / False) as `pretrained` and load it with the family's loader
    return timm.create_model(name, pretrained=False if source is None else source, **kwargs)
