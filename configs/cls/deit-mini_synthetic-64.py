# Tiny DeiT classifier on the synthetic dataset, from scratch on CPU (demo and tests), same schedule as the ViM one.
_base_ = ['./_base_/models/deit-mini.py', './_base_/datasets/synthetic-64.py', './_base_/schedules/cls_synthetic.py',
          './_base_/default_runtime.py']
