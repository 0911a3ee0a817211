"""Report of a pipeline run: ``report.md`` + ``report.json`` + PNGs, built from the files the stages wrote."""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vim_wsss.data.voc import VOC_CLASSES
from vim_wsss.utils import atomic_save_json

ROWS = (
    ('cls_map', 'classifier mAP (val)'),
    ('seed_miou', 'seed mIoU (score split)'),
    ('rw_miou', 'seeds + random walk mIoU (score split)'),
    ('pseudo_miou', 'pseudo-mask mIoU (score split)'),
    ('seg_miou', 'segmentation mIoU (val)'),
    ('seg_gt_miou', 'fully supervised upper bound (val)'),
)


def environment() -> dict[str, str]:
    """Versions and device of this process."""
    import mmengine
    import timm
    import torch

    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f'cpu ({cpu}, {os.cpu_count()} cores)'
    return {
        'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'mmengine': mmengine.__version__, 'platform': platform.platform(), 'device': device,
        'torch_threads': str(torch.get_num_threads()),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.2f}'
    return str(value)


def per_class_chart(per_class: dict[str, list[float]], path: Path, title: str) -> Path:
    """Grouped bar chart of per-class IoU (percent), one bar colour per backbone."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(per_class)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(VOC_CLASSES))
    fig, ax = plt.subplots(figsize=(12, 4))
    for i, name in enumerate(names):
        values = np.nan_to_num(np.asarray(per_class[name], dtype=float), nan=0.0)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(VOC_CLASSES, rotation=60, ha='right', fontsize=8)
    ax.set_ylabel('IoU (%)')
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_time_chart(seconds: dict[str, dict[str, float]], path: Path) -> Path:
    """Horizontal stacked bars of wall time per stage, one bar per backbone."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(seconds)))
    for row, (name, stages) in enumerate(seconds.items()):
        left = 0.0
        for stage, sec in stages.items():
            ax.barh(row, sec, left=left, label=stage if row == 0 else None)
            left += sec
    ax.set_yticks(range(len(seconds)))
    ax.set_yticklabels(list(seconds))
    ax.set_xlabel('seconds')
    ax.legend(fontsize=7, ncol=4, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _baseline_lines(baselines: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of the label-only baselines, one column per split."""
    if not baselines:
        return []
    splits = list(baselines)
    kinds = list(dict.fromkeys(k for split in splits for k in baselines[split]))
    lines = ['Trivial baselines, no model (background everywhere; the image-level classes over the whole image or in '
             'a centred blob), mIoU:', '', '| baseline | ' + ' | '.join(f'`{s}`' for s in splits) + ' |',
             '|---|' + '---|' * len(splits)]
    lines += [f'| {k} | ' + ' | '.join(_fmt(baselines[s].get(k)) for s in splits) + ' |' for k in kinds]
    return lines + ['']


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write report.md, report.json and charts into ``out_dir``.

    Args:
        results: ``{'backbones': {name: {metric: value, 'seg_per_class': [...], 'pseudo_per_class': [...],
            'stage_seconds': {...}, 'curve_png': path, 'overlay_png': path, 'refine_steps': [(step, miou)], ...}},
            'baselines': {split: {name: miou}}, 'dataset': {...}, 'total_seconds': float}``. Every number in it was read
            from a file a stage wrote.
        out_dir: the run's work dir.

    Returns:
        Path of report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    results.setdefault('environment', environment())
    backbones: dict[str, dict[str, Any]] = results['backbones']
    names = list(backbones)
    lines = ['# vim_wsss pipeline report', '']
    ds = results.get('dataset', {})
    lines += [f"Dataset: `{ds.get('root', '?')}` ({ds.get('kind', '?')}); seed/pseudo masks scored on "
              f"`{ds.get('score_split', '?')}`, threshold tuned on `{ds.get('tune_split', '?')}`, "
              f"segmentation on `{ds.get('val_split', 'val')}`.", '']
    lines += ['| metric | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    for key, label in ROWS:
        lines.append(f'| {label} | ' + ' | '.join(_fmt(backbones[n].get(key)) for n in names) + ' |')
    lines.append('| relevance method | ' + ' | '.join(str(backbones[n].get('method')) for n in names) + ' |')
    lines.append('| bg threshold (tuned) | ' + ' | '.join(_fmt(backbones[n].get('bg_threshold')) for n in names)
                 + ' |')
    lines.append('')
    lines += _baseline_lines(results.get('baselines', {}))
    for n in names:
        steps = backbones[n].get('refine_steps') or []
        if steps:
            chain = ' → '.join(f'{s} {_fmt(v)}' for s, v in steps)
            lines.append(f'Refinement ({n}): {chain}')
    lines.append('')
    seg_pc = {n: backbones[n]['seg_per_class'] for n in names if backbones[n].get('seg_per_class')}
    if seg_pc:
        per_class_chart(seg_pc, out / 'per_class_iou_seg.png', 'segmentation IoU per class (val)')
        lines += ['![per-class IoU](per_class_iou_seg.png)', '']
    pseudo_pc = {n: backbones[n]['pseudo_per_class'] for n in names if backbones[n].get('pseudo_per_class')}
    if pseudo_pc:
        per_class_chart(pseudo_pc, out / 'per_class_iou_pseudo.png', 'pseudo-mask IoU per class')
        lines += ['![per-class pseudo IoU](per_class_iou_pseudo.png)', '']
    for n in names:
        for key, title in (('curve_png', 'threshold curve'), ('overlay_png', 'examples')):
            src = backbones[n].get(key)
            if src and Path(src).is_file():
                dst = out / f'{n}_{key[:-4]}.png'
                shutil.copyfile(src, dst)
                lines += [f'{title} ({n}): ![{n} {title}]({dst.name})', '']
    seconds = {n: backbones[n].get('stage_seconds', {}) for n in names}
    if any(seconds.values()):
        stage_time_chart(seconds, out / 'stage_seconds.png')
        lines += ['## Wall time per stage (s)', '']
        for n in names:
            lines.append(f'- {n}: ' + ', '.join(f'{k} {v:.1f}' for k, v in seconds[n].items()))
        lines += ['', '![stage times](stage_seconds.png)', '']
    if 'total_seconds' in results:
        lines.append(f"Total wall time: {results['total_seconds']:.1f} s")
    lines += ['', '## Environment', '']
    lines += [f'- {k}: {v}' for k, v in results['environment'].items()]
    atomic_save_json(out / 'report.json', json.loads(json.dumps(results, default=str)))
    path = out / 'report.md'
    tmp = path.with_suffix('.md.tmp')
    tmp.write_text('\n'.join(lines) + '\n')
    tmp.replace(path)
    return path
