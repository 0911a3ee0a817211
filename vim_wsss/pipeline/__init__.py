"""End-to-end WSSS pipeline (classifier -> seeds -> refinement -> pseudo-masks -> segmentation -> report).

Every stage is cached by a hash of its parameters and inputs (:mod:`.cache`); :func:`run_pipeline` prints
stage-by-stage progress with a total ETA (:mod:`.progress`) and writes ``report.md`` / ``report.json`` / PNGs
(:mod:`.report`) whose numbers come from the files the stages wrote.
"""
from .cache import StageCache, StageResult, stage_key
from .progress import StageProgress

__all__ = ['StageCache', 'StageResult', 'StageProgress', 'stage_key', 'run_pipeline']


def run_pipeline(*args, **kwargs):
    """See :func:`vim_wsss.pipeline.runner.run_pipeline` (imported lazily: it pulls in mmengine/mmseg)."""
    from .runner import run_pipeline as _run

    return _run(*args, **kwargs)
