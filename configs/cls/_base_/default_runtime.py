# mmengine runtime for the stage-1 classifier (root registries: the classes register into mmengine's own).
default_scope = 'mmengine'
custom_imports = dict(imports=['vim_wsss.models.classifier', 'vim_wsss.data.datasets'], allow_failed_imports=False)
# default_hooks (logger / checkpoint intervals) live in the schedule files, as in mmseg.
custom_hooks = [dict(type='ClsMetricsHook')]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
# JSON scalars under <work_dir>/<timestamp>/vis_data/; add dict(type='TensorboardVisBackend') for TensorBoard.
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False, window_size=20)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
launcher = 'none'
