_base_ = './segformer_vim-mini.py'
model = dict(backbone=dict(_delete_=True, type='DeitBackbone', model_name='deit_mini_patch8_64', img_size=(64, 64),
                           out_indices=(0, 1, 2, 3), scales=None, drop_path_rate=0.0, pretrained=None))
