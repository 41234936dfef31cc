# F-ViT schedule as CLIPSelf's OV-COCO configs (wusize/CLIPSelf@1c7fe9c, F-ViT/configs/ov_coco/):
# AdamW lr 1e-4, weight decay 0.1, gradient clipping at norm 1.0, 3 epochs at a total batch of 64
# (8 GPUs x 8), a 250-iteration linear warm-up from 0.001 x lr and no decay (the reference's step
# at epoch 100 never comes: decaying overfits to the base classes; epoch 2 is often the best).
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=3, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    clip_grad=dict(max_norm=1.0, norm_type=2),
)
# mmengine's LinearLR reaches lr at step end - 1: end=251 gives mmcv's warm-up exactly,
# lr(k) = lr * (1 - (1 - k / 250) * 0.999) for k < 250, then lr.
param_scheduler = [dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=251)]
# `tools/train_det.py --amp`: fp16 with this static loss scale (the reference's fp16 = dict(loss_scale=512.0)).
amp_loss_scale = 512.0
# The reference scales lr by total batch / 64 (auto_scale_lr enable=True); here
# `tools/train_det.py --auto-scale-lr` does (the same at the reference's batch of 64).
auto_scale_lr = dict(enable=False, base_batch_size=64)
