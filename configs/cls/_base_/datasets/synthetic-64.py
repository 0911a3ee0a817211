# The embedded synthetic VOC-format dataset (`vim-wsss make-synthetic`): 64 px images, 20 shape x colour classes.
# The pipeline re-points it with cfg_options data_root=... (train_classifier updates every dataloader).
data_root = 'work_dirs/demo/data/VOC2012'
crop_size = 64
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='VOCClsDataset', root=data_root, split='train_aug',
                 transform=dict(kind='train', crop_size=crop_size, scale_range=(0.8, 1.25), hflip=True,
                                color_jitter=None)))
val_dataloader = dict(
    batch_size=50,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='VOCClsDataset', root=data_root, split='val', transform=dict(kind='eval', size=crop_size)))
val_evaluator = dict(type='MultiLabelMetric')
test_dataloader = val_dataloader
test_evaluator = val_evaluator
