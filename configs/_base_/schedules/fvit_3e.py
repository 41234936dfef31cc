# F-ViT schedule: AdamW (lr 1e-4, weight decay 0.1), 3 epochs at a total batch of 64 (8 GPUs x 8).
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=3, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", by_epoch=True, begin=0, end=3, milestones=[2], gamma=0.1),
]
# `tools/train_det.py --auto-scale-lr` rescales lr for another total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=64)
