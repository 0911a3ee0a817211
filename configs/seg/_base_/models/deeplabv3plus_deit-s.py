_base_ = './deeplabv3plus_vim-s.py'
model = dict(backbone=dict(_delete_=True, type='DeitBackbone', model_name='deit_s_patch16_224', img_size=(448, 448),
                           out_indices=(2, 5, 8, 11), scales=(4, 2, 1, 0.5), drop_path_rate=0.1,
                           pretrained='checkpoints/deit_small_patch16_224-cd65a155.pth'))
