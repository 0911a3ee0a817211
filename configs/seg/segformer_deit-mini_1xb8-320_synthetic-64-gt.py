# Fully supervised upper bound on the synthetic data.
_base_ = './segformer_deit-mini_1xb8-320_synthetic-64.py'
train_dataloader = dict(dataset=dict(data_prefix=dict(seg_map_path='SegmentationClassAug')))
