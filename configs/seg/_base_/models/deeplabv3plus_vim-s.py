_base_ = './segformer_vim-s.py'
# DeepLabV3+ head: ASPP on the stride-32 map, low-level features from the stride-4 map.
model = dict(decode_head=dict(
    _delete_=True, type='DepthwiseSeparableASPPHead', in_channels=384, in_index=3, channels=256,
    dilations=(1, 6, 12, 18), c1_in_channels=384, c1_channels=48, dropout_ratio=0.1, num_classes=21,
    norm_cfg={{_base_.norm_cfg}}, align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
