_base_ = ['./_base_/models/segformer_deit-mini.py', './_base_/datasets/synthetic-64.py',
          './_base_/schedules/schedule_synthetic.py', './_base_/default_runtime.py']
