# DeiT-S multi-label classifier on VOC train_aug, 448 crops, 20k iterations at batch 4 (ToCo-like, single scale).
# Same schedule as vim-s_voc12aug-448.py.
_base_ = ['./_base_/models/deit-s.py', './_base_/datasets/voc12aug-448.py', './_base_/schedules/cls_20k.py',
          './_base_/default_runtime.py']
