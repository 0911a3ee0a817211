_base_ = './schedule_20k.py'
# Short CPU schedule for the synthetic demo (the backbone starts from the stage-1 classifier): 160 iters x 8 images.
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=20, end=160),
]
train_cfg = dict(max_iters=160, val_interval=160)
default_hooks = dict(logger=dict(interval=40), checkpoint=dict(interval=160, max_keep_ckpts=1))
