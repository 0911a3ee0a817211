_base_ = ['./_base_/models/segformer_vim-s.py', './_base_/datasets/voc12aug-448.py',
          './_base_/schedules/schedule_20k.py', './_base_/default_runtime.py']
