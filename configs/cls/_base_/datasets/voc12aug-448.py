# PASCAL VOC 2012 + SBD (train_aug, 10,582 images) with image-level labels; ToCo-style single-scale crops.
# Change the location with --cfg-options data_root=... (train_classifier re-points every dataloader).
data_root = 'data/VOCdevkit/VOC2012'
crop_size = 448
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='VOCClsDataset', root=data_root, split='train_aug',
                 transform=dict(kind='train', crop_size=crop_size, scale_range=(0.5, 2.0), hflip=True)))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='VOCClsDataset', root=data_root, split='val', transform=dict(kind='eval', size=crop_size)))
val_evaluator = dict(type='MultiLabelMetric')
test_dataloader = val_dataloader
test_evaluator = val_evaluator
