"""Explainability: implicit attention of ViM mixers, class relevance maps, patch affinity, evaluation, pictures.

See ``docs/architecture.md`` (section Explainability) and the maths notes ``implicit-attention.md``.
"""
from .affinity import default_affinity_layers, patch_affinity
from .attribution import METHODS, default_start_layer, model_family, relevance_maps
from .evaluation import ImagenetSegmentation, average_precision, perturbation_test, segmentation_test
from .implicit_attention import (
    PARTS, ali_s6_rows, apply_conv_right, attention_channel_mean, conv_matrix, iter_mamba_attention,
    mamba_affine_remainder, mamba_attention, s6_matrix,
)

__all__ = [
    'mamba_attention', 'iter_mamba_attention', 'attention_channel_mean', 'mamba_affine_remainder', 's6_matrix',
    'conv_matrix', 'apply_conv_right', 'ali_s6_rows', 'PARTS', 'relevance_maps', 'METHODS', 'model_family',
    'default_start_layer', 'patch_affinity', 'default_affinity_layers', 'perturbation_test', 'segmentation_test',
    'average_precision', 'ImagenetSegmentation',
]
