default_scope = 'mmseg'
custom_imports = dict(imports=['vim_wsss.seg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
# A fixed seed: without one mmengine draws it from numpy's global RNG, so the result would depend on what ran
# earlier in the same process (e.g. a pipeline that trained the classifier first vs one that found it cached).
randomness = dict(seed=0)
