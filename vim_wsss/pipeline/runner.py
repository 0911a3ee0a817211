"""The end-to-end run: for each backbone, classifier -> maps -> threshold sweep -> pseudo-masks -> segmentation.

Stages and what invalidates them (each is cached under ``<work_dir>/stages/<name>-<hash>/``):

=========  ====================================================  =========================
stage      does                                                  key covers
=========  ====================================================  =========================
data       generate the synthetic dataset (or check a VOC root)  data settings
baselines  label-only masks on the score and val splits         data
cls        train the multi-label classifier                      cls config text, data
maps       cache per-class relevance (+ random-walk) maps        method, cls
sweep      tune the background threshold, score seeds            thresholds, maps
pseudo     refined pseudo-masks + per-step scores                refine steps, sweep
seg        mmseg head on the pseudo-masks, val mIoU              seg config text, pseudo, cls
seg_gt     same head on GT masks (upper bound)                   seg config text, data, cls
=========  ====================================================  =========================
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mmengine.config import Config

from vim_wsss.pipeline.cache import StageCache, StageResult
from vim_wsss.pipeline.progress import StageProgress
from vim_wsss.pipeline.report import write_report
from vim_wsss.utils import config_from_file

PER_BACKBONE = ('cls', 'maps', 'sweep', 'pseudo', 'seg', 'seg_gt')


def config_digest(path: str) -> str:
    """sha256 of a config after ``_base_`` inheritance (so editing a base file invalidates its users)."""
    return hashlib.sha256(Config.fromfile(path).pretty_text.encode()).hexdigest()


def _options(bb: Any, key: str) -> Dict[str, Any]:
    """A backbone's ``cls_options`` / ``seg_options`` (cfg_options for its stage configs) as stage parameters."""
    opts = dict(bb.get(key) or {})
    return {key: opts} if opts else {}


class Pipeline:
    """One pipeline config, run stage by stage with caching.

    Args:
        cfg: the pipeline Config (see ``configs/pipeline/``).
        work_dir: run folder (report and ``stages/``).
        only: restrict to these backbone names (None = all in the config).
        verbose: print the stages' own log lines (mmengine) instead of writing them to ``<stage dir>/stage.log``.
    """

    def __init__(self, cfg: Config, work_dir: Path, only: Optional[Sequence[str]] = None, verbose: bool = False):
        self.cfg = cfg
        self.verbose = verbose
        self.work_dir = Path(work_dir)
        self.cache = StageCache(self.work_dir / 'stages')
        self.names = [n for n in cfg.backbones if only is None or n in only]
        expected = cfg.get('expected_seconds', {})
        plan = [('data', expected.get('data', 10)), ('baselines', expected.get('baselines', 5))]
        plan += [(f'{n}: {s}', expected.get(s, 30)) for n in self.names for s in PER_BACKBONE]
        self.progress = StageProgress(plan)

    @property
    def maps_options(self) -> Dict[str, Any]:
        """``maps`` of the config: ``rw`` (random-walk maps; needed when ``pseudo.refine`` has 'rw') and
        ``batch_size``."""
        opts = dict(dict(rw=True, batch_size=8), **dict(self.cfg.get('maps') or {}))
        if 'rw' in self.cfg.pseudo.refine and not opts['rw']:
            from vim_wsss.data.voc import DataError

            raise DataError("pseudo.refine has 'rw' but maps.rw=False; set maps.rw=True or drop 'rw' from the chain.")
        return opts

    # -- helpers ------------------------------------------------------------------------------------------------
    def stage(self, label: str, name: str, params: Dict[str, Any], inputs: List[StageResult], fn) -> StageResult:
        started = self.progress.begin(label)
        result = self.cache.run(name, params, inputs, fn if self.verbose else lambda d: self._logged(d, fn))
        self.progress.end(label, started, result.cached)
        return result

    def _logged(self, stage_dir: Path, fn) -> Dict[str, Any]:
        """Run ``fn(stage_dir)`` with stdout (mmengine's log lines) and Python warnings going to
        ``<stage_dir>/stage.log``; progress bars stay on stderr."""
        log = stage_dir / 'stage.log'
        self.progress.note(f'log: {log}')
        with open(log, 'a') as stream, contextlib.redirect_stdout(stream), warnings.catch_warnings():
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: stream.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            return fn(stage_dir)

    @property
    def root(self) -> Path:
        return Path(self.data.outputs['root'])

    def split(self, name: str) -> List[str]:
        from vim_wsss.data.voc import read_split

        return read_split(self.root, name)

    # -- shared stages ------------------------------------------------------------------------------------------
    def run_data(self) -> StageResult:
        d = dict(self.cfg.data)

        def make(stage_dir: Path) -> Dict[str, Any]:
            from vim_wsss.data.voc import check_root

            if d['kind'] == 'synthetic':
                from vim_wsss.data.synthetic import make_synthetic

                root = Path(d['root']) if d.get('root') else self.work_dir / 'data' / 'VOC2012'
                make_synthetic(root, seed=d['seed'], num_train=d['num_train'], num_val=d['num_val'], size=d['size'])
            else:
                root = check_root(d['root'])
            return {'root': str(Path(root).resolve())}

        self.data = self.stage('data', 'data', d, [], make)
        d = self.cfg.data
        self.score_names = self.split(d.score_split)
        self.tune_names = sorted(set(self.split(d.train_split)) - set(self.score_names))
        return self.data

    def run_baselines(self) -> StageResult:
        """Label-only masks scored on the score split (compare with seeds / pseudo-masks) and on the val split
        (compare with the segmentation head): ``{split: {kind: mIoU}}``."""
        splits = list(dict.fromkeys((self.cfg.data.score_split, self.cfg.data.val_split)))

        def score(stage_dir: Path) -> Dict[str, Any]:
            from vim_wsss.data.voc import labels_from_masks, load_cls_labels
            from vim_wsss.wsss.evaluate import eval_baselines

            d = self.cfg.data
            path = self.root / 'cls_labels_onehot.npy'
            known = load_cls_labels(path) if path.is_file() else {}
            out = {}
            for split in splits:
                names = self.split(split)
                labels = known if all(n in known for n in names) else labels_from_masks(self.root, names, d.gt_dir)
                scores = eval_baselines(self.root, names, labels, kinds=list(self.cfg.baselines), mask_dir=d.gt_dir)
                out[split] = {k: v['miou'] for k, v in scores.items()}
            return out

        return self.stage('baselines', 'baselines', {'kinds': list(self.cfg.baselines), 'splits': splits},
                          [self.data], score)

    # -- per-backbone stages ------------------------------------------------------------------------------------
    def run_backbone(self, name: str) -> Dict[str, Any]:
        bb = self.cfg.backbones[name]
        row: Dict[str, Any] = {'method': bb.method}
        cls_params = {'config': config_digest(bb.cls_config), 'backbone': name, **_options(bb, 'cls_options')}
        cls = self.stage(f'{name}: cls', 'cls', cls_params, [self.data], lambda d: self._train_cls(bb, d))
        maps = self.stage(f'{name}: maps', 'maps', {'method': bb.method, 'start_layer': bb.get('start_layer'),
                                                    'rw': self.maps_options['rw']}, [cls],
                          lambda d: self._maps(bb, cls, d))
        sweep = self.stage(f'{name}: sweep', 'sweep', {'thresholds': list(self.cfg.seeds.thresholds)}, [maps],
                           lambda d: self._sweep(maps, d))
        pseudo = self.stage(f'{name}: pseudo', 'pseudo', dict(self.cfg.pseudo), [sweep, maps],
                            lambda d: self._pseudo(maps, sweep, d))
        seg_opts = _options(bb, 'seg_options')
        seg = self.stage(f'{name}: seg', 'seg', {'config': config_digest(bb.seg_config), **seg_opts}, [pseudo, cls],
                         lambda d: self._seg(bb, bb.seg_config, cls, d, pseudo.outputs['dir']))
        seg_gt = self.stage(f'{name}: seg_gt', 'seg_gt', {'config': config_digest(bb.seg_gt_config), **seg_opts},
                            [cls], lambda d: self._seg(bb, bb.seg_gt_config, cls, d, None))
        row.update(cls_map=cls.outputs['mAP'], seed_miou=sweep.outputs['seed_miou'],
                   rw_miou=sweep.outputs['rw_miou'], bg_threshold=sweep.outputs['threshold'],
                   curve_png=sweep.outputs['png'],
                   pseudo_miou=pseudo.outputs['miou'], pseudo_per_class=pseudo.outputs['per_class'],
                   refine_steps=pseudo.outputs['steps'], overlay_png=pseudo.outputs.get('overlay_png'),
                   seg_miou=seg.outputs['mIoU'], seg_per_class=seg.outputs['per_class'],
                   seg_gt_miou=seg_gt.outputs['mIoU'],
                   stage_seconds={r.name: round(r.seconds, 1) for r in (cls, maps, sweep, pseudo, seg, seg_gt)})
        return row

    def _train_cls(self, bb: Any, stage_dir: Path) -> Dict[str, Any]:
        from vim_wsss.wsss.train import read_cls_metrics, train_classifier

        resume = (stage_dir / 'last_checkpoint').is_file()  # the stage folder is the pipeline's own: else start over
        options = {'data_root': str(self.root), **dict(bb.get('cls_options') or {})}
        ckpt = train_classifier(bb.cls_config, stage_dir, options, resume=resume, overwrite=True)
        history = read_cls_metrics(stage_dir)
        best = max((h for h in history if 'cls/mAP' in h), key=lambda h: h['cls/mAP'], default={})
        return {'checkpoint': str(ckpt), 'mAP': best.get('cls/mAP'), 'F1': best.get('cls/F1_macro'),
                'history': history}

    def _maps(self, bb: Any, cls: StageResult, stage_dir: Path) -> Dict[str, Any]:
        from vim_wsss.wsss.seeds import make_seeds

        result = make_seeds(bb.cls_config, cls.outputs['checkpoint'], self.root, self.cfg.data.train_split,
                            stage_dir / 'maps', method=bb.method, start_layer=bb.get('start_layer'),
                            **self.maps_options)
        return {'dir': str(stage_dir / 'maps'), 'written': result['written'],
                'no_label': result['skipped_no_label']}

    def _sweep(self, maps: StageResult, stage_dir: Path) -> Dict[str, Any]:
        from vim_wsss.wsss.evaluate import sweep_seeds

        d = self.cfg.data
        keys = ('maps', 'rw') if self.maps_options['rw'] else ('maps',)
        res = sweep_seeds(maps.outputs['dir'], self.root, d.score_split, d.train_split, self.cfg.seeds.thresholds,
                          keys=keys, mask_dir=d.gt_dir, out_dir=stage_dir)
        out = {key: {'threshold': r['best_threshold'], 'miou': r['score']['miou'], 'png': r['png']}
               for key, r in res.items()}
        rw = out.get('rw', {})
        return {'seed_miou': out['maps']['miou'], 'threshold': out['maps']['threshold'], 'png': out['maps']['png'],
                'rw_miou': rw.get('miou'), 'rw_threshold': rw.get('threshold')}

    def _pseudo(self, maps: StageResult, sweep: StageResult, stage_dir: Path) -> Dict[str, Any]:
        from vim_wsss.wsss.evaluate import eval_masks, save_overlays, seed_source
        from vim_wsss.wsss.pseudo import make_pseudo

        chain = list(self.cfg.pseudo.refine)
        threshold = sweep.outputs['rw_threshold'] if 'rw' in chain else sweep.outputs['threshold']
        steps = [('seeds', sweep.outputs['seed_miou'])]
        if 'rw' in chain:
            steps.append(('rw', sweep.outputs['rw_miou']))
        images = self.root / 'JPEGImages'
        # score every prefix of the refinement chain on the score split; the full chain also labels train_aug
        for k in range(1, len(chain) + 1):
            prefix = chain[:k]
            if prefix == ['rw']:
                continue
            out = stage_dir / ('masks' if k == len(chain) else 'steps_' + '-'.join(prefix))
            make_pseudo(maps.outputs['dir'], images, self.score_names, out, threshold, refine=prefix,
                        workers=self.cfg.pseudo.get('workers', 0), progress=False)
            steps.append(('+'.join(prefix), eval_masks(out, self.root, names=self.score_names,
                                                       mask_dir=self.cfg.data.gt_dir)['miou']))
        final = stage_dir / 'masks'
        make_pseudo(maps.outputs['dir'], images, self.split(self.cfg.data.train_split), final, threshold,
                    refine=chain, workers=self.cfg.pseudo.get('workers', 0))
        metrics = eval_masks(final, self.root, names=self.score_names, mask_dir=self.cfg.data.gt_dir)
        overlay = save_overlays(self.score_names[:6], images, {
            'seed': seed_source(maps.outputs['dir'], sweep.outputs['threshold']), 'pseudo': final,
            'GT': self.root / self.cfg.data.gt_dir}, stage_dir / 'overlays.png')
        return {'dir': str(final), 'miou': metrics['miou'], 'per_class': metrics['iou'], 'steps': steps,
                'threshold': threshold, 'overlay_png': str(overlay)}

    def _seg(self, bb: Any, config: str, cls: StageResult, stage_dir: Path,
             pseudo_dir: Optional[str]) -> Dict[str, Any]:
        from vim_wsss.data.voc import VOC_CLASSES
        from vim_wsss.seg.train import data_options, test_seg, train_seg

        options = data_options(self.root, pseudo_dir, train_split=self.cfg.data.train_split)
        options['model.backbone.pretrained'] = cls.outputs['checkpoint']
        options.update(bb.get('seg_options') or {})
        resume = (stage_dir / 'last_checkpoint').is_file()
        ckpt = train_seg(config, stage_dir, options, resume=resume)
        metrics = test_seg(config, ckpt, stage_dir / 'test', options)
        return {'checkpoint': str(ckpt), 'mIoU': metrics['mIoU'],
                'per_class': [metrics.get(f'IoU.{c}') for c in VOC_CLASSES]}

    # -- whole run ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        start = time.perf_counter()
        self.run_data()
        baselines = self.run_baselines()
        rows = {name: self.run_backbone(name) for name in self.names}
        d = self.cfg.data
        tune = f'{d.train_split} minus {d.score_split} ({len(self.tune_names)} images)'
        results = {
            'backbones': rows,
            'baselines': baselines.outputs,
            'dataset': {'root': str(self.root), 'kind': d.kind, 'score_split': d.score_split, 'tune_split': tune,
                        'val_split': d.val_split},
            'total_seconds': time.perf_counter() - start,
        }
        return write_report(results, self.work_dir)


def run_pipeline(config: str, work_dir: Optional[str] = None, cfg_options: Optional[Dict[str, Any]] = None,
                 only: Optional[Sequence[str]] = None, verbose: bool = False) -> Path:
    """Run a pipeline config end to end and return the path of ``report.md``."""
    cfg = config_from_file(config, 'configs/pipeline/')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    work_dir = Path(work_dir or cfg.get('work_dir') or Path('work_dirs') / Path(config).stem)
    return Pipeline(cfg, work_dir, only, verbose).run()
