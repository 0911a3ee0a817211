# DeiT-S (D=384, 12 blocks, class token first) multi-label classifier, the in-family baseline of the ViM model.
model = dict(
    type='MultiLabelClassifier',
    backbone=dict(name='deit_s_patch16_224', img_size=448, pretrained='checkpoints/deit_small_patch16_224-cd65a155.pth',
                  drop_path_rate=0.1),
    num_classes=20,
    loss='multilabel_soft_margin')
