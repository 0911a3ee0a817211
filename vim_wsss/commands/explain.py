"""``vim-wsss explain``: class relevance overlays for a few images.

Example::

    vim-wsss explain --model vim_small_patch16_224 --checkpoint work_dirs/cls/best.pth --num-classes 20 \\
        --method ours --topk 2 --out work_dirs/explain img1.jpg img2.jpg

Writes ``<out>/<image stem>_<method>_c<class>.png`` (heat map over the resized image) per image and class, and
``<out>/grid_<method>.png`` with all overlays. The checkpoint may be an official ``.pth``, a plain state dict, or a
``train-cls`` checkpoint (read by :mod:`vim_wsss.models.checkpoint`, like every checkpoint).
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn

NAME = 'explain'
HELP = 'relevance-map overlays (implicit attention for ViM, attention for DeiT) for images'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the subcommand."""
    parser.add_argument('images', nargs='+', help='image files (any format OpenCV reads)')
    parser.add_argument('--model', required=True,
                        help='backbone name, e.g. vim_small_patch16_224 or deit_s_patch16_224')
    parser.add_argument('--checkpoint', default=None, help='weights (.pth); omitted = random weights (smoke runs)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='classifier outputs (default: from the checkpoint head, else 1000)')
    parser.add_argument('--method', default=None, help="relevance method (default 'ours' for ViM, "
                                                        "'transformer_attr' for DeiT)")
    parser.add_argument('--classes', type=int, nargs='+', default=None, help='class indices to explain (all images)')
    parser.add_argument('--topk', type=int, default=1, help='explain the top-k predicted classes (without --classes)')
    parser.add_argument('--start-layer', type=int, default=None, help='first layer of the rollout')
    parser.add_argument('--alpha', type=float, default=0.5, help='heat-map opacity')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")


def load_model(name: str, checkpoint: Optional[str], num_classes: Optional[int], device: str) -> nn.Module:
    """Build ``name`` and load ``checkpoint`` strictly (head included), in eval mode on ``device``."""
    from vim_wsss.models import create_model
    from vim_wsss.models.checkpoint import backbone_state_dict, load_state, read_checkpoint

    if checkpoint is None:
        warnings.warn('no --checkpoint: explaining a randomly initialised model (smoke run only).')
        return create_model(name, num_classes=num_classes or 1000).to(device).eval()
    state = backbone_state_dict(read_checkpoint(checkpoint), checkpoint)
    head = state.get('head.weight')
    classes = num_classes or (int(head.shape[0]) if isinstance(head, torch.Tensor) else 1000)
    model = create_model(name, num_classes=classes)
    load_state(model, state, checkpoint, new_head=False)
    return model.to(device).eval()


def read_image(path: str, size: Sequence[int]) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` (read as every stage reads images: 16-bit, grey, palette handled) resized to ``size``."""
    from vim_wsss.data.voc import read_image as read_rgb

    return cv2.resize(read_rgb(path, listed=False), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> normalised ``(3, H, W)`` (ImageNet statistics)."""
    from vim_wsss.explain.visualize import IMAGENET_MEAN, IMAGENET_STD

    x = (rgb.astype(np.float32) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def main(args: argparse.Namespace) -> int:
    """Explain ``args.images`` and write overlays; returns the exit status."""
    from vim_wsss.explain import METHODS, model_family, relevance_maps
    from vim_wsss.explain.visualize import overlay_grid, overlay_heatmap, save_png

    model = load_model(args.model, args.checkpoint, args.num_classes, args.device)
    family = model_family(model)
    method = args.method or ('ours' if family == 'vim' else 'transformer_attr')
    if method not in METHODS[family]:
        raise SystemExit(f'--method {method} is not available for {family}; choose one of {sorted(METHODS[family])}')
    size = tuple(model.patch_embed.img_size)
    rgbs = [read_image(p, size) for p in args.images]
    images = torch.stack([to_tensor(r) for r in rgbs]).to(args.device)
    if args.classes:
        classes = torch.tensor(args.classes, dtype=torch.long).expand(len(rgbs), -1)
    else:
        with torch.no_grad():
            logits = model(images)
        classes = logits.topk(min(args.topk, logits.shape[1]), dim=1).indices
    maps = relevance_maps(model, images, classes.to(args.device), method, start_layer=args.start_layer)
    tiles: List[np.ndarray] = []
    for i, (path, rgb) in enumerate(zip(args.images, rgbs)):
        stem = os.path.splitext(os.path.basename(path))[0]
        for k in range(classes.shape[1]):
            overlay = overlay_heatmap(rgb, maps[i, k], alpha=args.alpha)
            save_png(os.path.join(args.out, f'{stem}_{method}_c{int(classes[i, k])}.png'), overlay)
            tiles.append(overlay)
    save_png(os.path.join(args.out, f'grid_{method}.png'), overlay_grid(tiles, ncols=classes.shape[1]))
    print(f'wrote {len(tiles)} overlays and grid_{method}.png to {args.out}')
    return 0
