# Tiny ViM for the synthetic demo (64 px, patch 8 -> 8x8 patches), trained from scratch on CPU.
model = dict(
    type='MultiLabelClassifier',
    backbone=dict(name='vim_mini_patch8_64', pretrained=None),
    num_classes=20,
    loss='multilabel_soft_margin')
