# The embedded synthetic VOC-format dataset (vim-wsss make-synthetic): 64 px images, no resizing at test time.
_base_ = './voc12aug-448.py'
data_root = 'work_dirs/demo/data/VOC2012'
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadVOCImage'),
    dict(type='LoadVOCAnnotations'),
    dict(type='RandomResize', scale=(64, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [dict(type='LoadVOCImage'), dict(type='LoadVOCAnnotations'), dict(type='PackSegInputs')]
img_ratios = [1.0]
train_dataloader = dict(batch_size=8, num_workers=2, persistent_workers=True,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
