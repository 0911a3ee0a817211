_base_ = './segformer_vim-s.py'
# Tiny ViM (6 blocks, D=64, N=8, patch 8) for the synthetic demo; all maps at stride 8.
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(model_name='vim_mini_patch8_64', img_size=(64, 64), out_indices=(1, 2, 3, 5), scales=None,
                  drop_path_rate=0.0, pretrained=None),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=96),
    test_cfg=dict(mode='whole'))
