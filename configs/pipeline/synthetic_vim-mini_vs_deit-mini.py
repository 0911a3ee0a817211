# The embedded default run (`make demo`): synthetic VOC-format data, tiny ViM vs tiny DeiT, CPU, minutes.
# Every stage is cached by a hash of its parameters and inputs: re-running skips finished stages, and changing a
# threshold re-runs only what depends on it.
work_dir = 'work_dirs/demo'

data = dict(
    kind='synthetic',          # 'synthetic' (generated into <work_dir>/data) or 'voc' (root must exist)
    root=None,                 # None = <work_dir>/data/VOC2012 for synthetic
    seed=0,
    num_train=800,
    num_val=150,
    size=64,
    train_split='train_aug',   # what the classifier and the segmentation head train on
    score_split='train',       # where seeds / pseudo-masks are scored against GT (VOC convention)
    val_split='val',           # where the segmentation head is scored
    gt_dir='SegmentationClassAug',
)

# threshold of the background is tuned on train_aug minus the score split, and scored on the score split
seeds = dict(
    thresholds=[round(0.05 * i, 2) for i in range(0, 19)],
    high=None,
    low=None,
)
# relevance maps of train_split: rw = also the affinity random-walk maps (needed by 'rw' in the chain below)
maps = dict(rw=True, batch_size=8)
# refinement chain, in order, from 'rw' (affinity random walk), 'par', 'crf'; the random-walk seeds are always scored
# (report row 'seeds + random walk'), so the chain can leave 'rw' out where it does not help (tiny untrained affinity)
pseudo = dict(refine=['par', 'crf'], workers=2)

# Both backbones use Chefer's gradient-weighted rollout: on DeiT's attention, and on ViM's full implicit attention
# (the paper's formula). On the tiny from-scratch ViM it scores seeds 62 where the class-token-row 'ours' gets 29:
# information reaches the class token over several layers along the scan, which only full matrices follow.
# per backbone: the stage configs, the attribution method, and optional cls_options / seg_options (cfg_options of
# the classifier / segmentation configs, e.g. cls_options={'train_cfg.max_iters': 100}; part of the stage hash)
backbones = dict(
    vim=dict(
        cls_config='configs/cls/vim-mini_synthetic-64.py',
        method='transformer_attr',
        seg_config='configs/seg/segformer_vim-mini_1xb8-320_synthetic-64.py',
        seg_gt_config='configs/seg/segformer_vim-mini_1xb8-320_synthetic-64-gt.py',
    ),
    deit=dict(
        cls_config='configs/cls/deit-mini_synthetic-64.py',
        method='transformer_attr',
        seg_config='configs/seg/segformer_deit-mini_1xb8-320_synthetic-64.py',
        seg_gt_config='configs/seg/segformer_deit-mini_1xb8-320_synthetic-64-gt.py',
    ),
)

baselines = ['background', 'whole_image', 'centre_blob']
# rough seconds per stage on 2 CPU cores (mean of the two backbones): where the ETA starts; measured stages correct it
expected_seconds = dict(data=3, baselines=1, cls=80, maps=13, sweep=3, pseudo=27, seg=40, seg_gt=41)
