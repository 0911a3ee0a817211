"""``vim-wsss make-seeds``: cache per-class relevance maps (and random-walk maps) of a trained classifier."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='the classifier config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='classifier checkpoint (best_*.pth of train-cls)')
    parser.add_argument('--data-root', required=True, help='VOC root')
    parser.add_argument('--split', default='train_aug', help='images to explain (default train_aug)')
    parser.add_argument('--out', required=True, help='cache folder (one .npz per image; resumable)')
    parser.add_argument('--method', help="attribution method (default: 'ours' for ViM, 'transformer_attr' for DeiT)")
    parser.add_argument('--start-layer', type=int, help='first layer of the rollout')
    parser.add_argument('--scales', type=float, nargs='+', default=[1.0], help='input scales (multi-scale)')
    parser.add_argument('--flip', action='store_true', help='average with the flipped image')
    parser.add_argument('--no-rw', action='store_true', help='skip the affinity random walk')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', default='cuda' if _cuda() else 'cpu')


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(args: argparse.Namespace) -> int:
    from vim_wsss.data.datasets import VOCClsDataset
    from vim_wsss.wsss.seeds import compute_maps
    from vim_wsss.wsss.train import load_classifier

    model = load_classifier(args.config, args.checkpoint, device=args.device)
    dataset = VOCClsDataset(args.data_root, args.split, transform=dict(kind='eval', size=model.patch_embed.img_size[0]))
    result = compute_maps(model, dataset, args.out, method=args.method, start_layer=args.start_layer,
                          scales=args.scales, flip=args.flip, rw=not args.no_rw, batch_size=args.batch_size,
                          device=args.device)
    print(f"maps: {result['written']} written, {result['skipped_done']} already done, "
          f"{result['skipped_no_label']} without a positive label (skipped) -> {result['out_dir']}")
    return 0
