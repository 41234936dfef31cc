# F-ViT's OV-LVIS schedule (wusize/CLIPSelf@1c7fe9c, F-ViT/configs/ov_lvis/): the OV-COCO
# optimiser, warm-up and clipping for 48 epochs ("4x"), lr x0.1 after epochs 32 and 44.
_base_ = "fvit_3e.py"
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=48, val_interval=12)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=251),
    dict(type="MultiStepLR", by_epoch=True, begin=0, end=48, milestones=[32, 44], gamma=0.1),
]
