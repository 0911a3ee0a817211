# ToCo-like schedule: AdamW lr 6e-5, wd 1e-2, 1500 linear warm-up iterations, poly(0.9) to 20k iterations.
# Layer-wise settings are data: no weight decay on position/class embeddings, SSM A_log/D and norms; head lr x10.
max_iters = 20000
warmup_iters = 1500
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=1e-2),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.0),
        'cls_token': dict(decay_mult=0.0),
        'A_log': dict(decay_mult=0.0),
        'A_b_log': dict(decay_mult=0.0),
        'mixer.D': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
        'backbone.head': dict(lr_mult=10.0),
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000, max_keep_ckpts=2, save_best='cls/mAP',
                    rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
