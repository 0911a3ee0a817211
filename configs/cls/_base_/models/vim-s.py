# Vim-S (D=384, 24 blocks, middle class token) multi-label classifier, 20 VOC classes on the class token.
# `pretrained` = the official ImageNet file in checkpoints/ (its 1000-class head is dropped, pos_embed resampled).
model = dict(
    type='MultiLabelClassifier',
    backbone=dict(name='vim_small_patch16_224', img_size=448, pretrained='checkpoints/vim_s_midclstok_80p5acc.pth',
                  drop_path_rate=0.1),
    num_classes=20,
    loss='multilabel_soft_margin')
