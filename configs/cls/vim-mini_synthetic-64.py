# Tiny ViM classifier on the synthetic dataset, from scratch on CPU (demo and tests).
_base_ = ['./_base_/models/vim-mini.py', './_base_/datasets/synthetic-64.py', './_base_/schedules/cls_synthetic.py',
          './_base_/default_runtime.py']
# ViM-mini learns from scratch faster with a larger step (mAP ~50 vs ~41 at 1e-3 after 500 iterations).
optim_wrapper = dict(optimizer=dict(lr=3e-3))
