# Train on a folder of pseudo-masks (index PNGs named <image>.png) over VOC train_aug, validate on GT val masks.
# CheckedPascalVOCDataset / LoadVOCImage / LoadVOCAnnotations (vim_wsss.seg) are mmseg's PascalVOCDataset /
# LoadImageFromFile / LoadAnnotations plus checks: split list, folders, files, mask values 0..20/255 and mask size.
dataset_type = 'CheckedPascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
pseudo_dir = 'work_dirs/pseudo_masks'  # absolute or relative to data_root; the pipeline sets it
crop_size = (448, 448)
train_pipeline = [
    dict(type='LoadVOCImage'),
    dict(type='LoadVOCAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadVOCImage'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadVOCAnnotations'),
    dict(type='PackSegInputs'),
]
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadVOCImage', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadVOCAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
train_dataloader = dict(
    batch_size=8, num_workers=4, persistent_workers=True, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='ImageSets/Segmentation/train_aug.txt',
                 data_prefix=dict(img_path='JPEGImages', seg_map_path=pseudo_dir), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='ImageSets/Segmentation/val.txt',
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
