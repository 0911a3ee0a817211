# Fully supervised upper bound: same model and schedule, trained on the GT masks of train_aug.
_base_ = './segformer_vim-s_1xb8-20k_voc12aug-448.py'
train_dataloader = dict(dataset=dict(data_prefix=dict(seg_map_path='SegmentationClassAug')))
