# ViM-S (24 blocks, D=384) -> 4 maps from blocks 5/11/17/23 rescaled to strides 4/8/16/32 -> SegFormer MLP head.
norm_cfg = dict(type='SyncBN', requires_grad=True)  # reverted to BN by mmengine when not distributed
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
    pad_val=0, seg_pad_val=255, size=(448, 448))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='VimBackbone', model_name='vim_small_patch16_224', img_size=(448, 448),
                  out_indices=(5, 11, 17, 23), scales=(4, 2, 1, 0.5), drop_path_rate=0.1,
                  pretrained='checkpoints/vim_s_midclstok_80p5acc.pth'),
    decode_head=dict(type='SegformerHead', in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3], channels=256,
                     dropout_ratio=0.1, num_classes=21, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(448, 448), stride=(298, 298)),
)
