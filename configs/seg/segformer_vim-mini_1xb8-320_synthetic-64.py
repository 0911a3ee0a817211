_base_ = ['./_base_/models/segformer_vim-mini.py', './_base_/datasets/synthetic-64.py',
          './_base_/schedules/schedule_synthetic.py', './_base_/default_runtime.py']
