"""ViM and DeiT as mmseg backbones: multi-level NCHW features from chosen blocks, class token removed.

Weights come from ``pretrained``: an official Vim / DeiT ``.pth``, a plain state dict, or a stage-1 classifier
checkpoint written by mmengine (keys ``backbone.*``); the head is dropped and ``pos_embed`` resampled to the crop
size by the family's ``checkpoint_filter_fn``. The backbone is built for a fixed input size (``img_size``), so
configs use ``mode='slide'`` test-time inference with that crop size for images of other sizes.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from vim_wsss.models import create_model, load_weights


def _rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1:
        return x
    if scale > 1:
        return F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False)
    k = int(round(1 / scale))
    return F.max_pool2d(x, kernel_size=k, stride=k)


@MODELS.register_module()
class TokenBackbone(BaseModule):
    """A vim_wsss backbone (ViM or DeiT) returning NCHW maps from chosen blocks.

    Args:
        model_name: a name from :func:`vim_wsss.models.list_models`.
        img_size: crop size the token grid is built for.
        out_indices: blocks whose outputs are returned (negative = from the end).
        scales: optional per-output resampling factors (e.g. ``(4, 2, 1, 0.5)`` gives a stride-4..32 pyramid
            from a stride-16 ViT, like a parameter-free simple FPN); None keeps every map at the patch stride.
        pretrained: checkpoint path (official, plain, or a stage-1 classifier checkpoint).
        drop_path_rate: stochastic depth.
        norm: apply the final norm to intermediates.
    """

    def __init__(self, model_name: str, img_size: Union[int, Tuple[int, int]], out_indices: Sequence[int] = (-1,),
                 scales: Optional[Sequence[float]] = None, pretrained: Optional[str] = None,
                 drop_path_rate: float = 0.1, norm: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.model = create_model(model_name, img_size=img_size, num_classes=0, drop_path_rate=drop_path_rate)
        self.out_indices = list(out_indices)
        if scales is not None and len(scales) != len(self.out_indices):
            raise ValueError(f'scales {scales} must give one factor per output index {self.out_indices}')
        self.scales = list(scales) if scales is not None else [1] * len(self.out_indices)
        self.norm = norm
        if pretrained:  # marks the model initialised: the segmentor's init_weights() keeps the file's weights
            load_weights(self.model, pretrained, new_head=True)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` with (H, W) = img_size -> tuple of ``(B, D, gh * s, gw * s)``."""
        depth = len(self.model.feature_info)
        wanted = [i % depth for i in self.out_indices]
        unique = sorted(set(wanted))  # a block may feed several pyramid levels
        feats = self.model.forward_intermediates(x, indices=unique, norm=self.norm, output_fmt='NCHW',
                                                 intermediates_only=True)
        by_index = dict(zip(unique, feats))
        return tuple(_rescale(by_index[i], s) for i, s in zip(wanted, self.scales))


@MODELS.register_module()
class VimBackbone(TokenBackbone):
    """:class:`TokenBackbone` restricted to Vision Mamba models."""

    def __init__(self, model_name: str = 'vim_small_patch16_224', **kwargs):
        if not model_name.startswith('vim_'):
            raise ValueError(f'VimBackbone needs a vim_* model, got {model_name!r}')
        super().__init__(model_name, **kwargs)


@MODELS.register_module()
class DeitBackbone(TokenBackbone):
    """:class:`TokenBackbone` restricted to DeiT models."""

    def __init__(self, model_name: str = 'deit_s_patch16_224', **kwargs):
        if not model_name.startswith('deit_'):
            raise ValueError(f'DeitBackbone needs a deit_* model, got {model_name!r}')
        super().__init__(model_name, **kwargs)
