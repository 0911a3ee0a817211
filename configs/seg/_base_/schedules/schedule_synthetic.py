_base_ = './schedule_20k.py'
# Short CPU schedule for the synthetic demo (the backbone starts from the stage-1 classifier): 320 iters x 8 images.
# At 160 iters the ViM head trained on its (noisier) pseudo-masks could still predict background everywhere.
optim_wrapper = dict(optimizer=dict(lr=1.5e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=20, end=320),
]
train_cfg = dict(max_iters=320, val_interval=320)
default_hooks = dict(logger=dict(interval=40), checkpoint=dict(interval=320, max_keep_ckpts=1))
