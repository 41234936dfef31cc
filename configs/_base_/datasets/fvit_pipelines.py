# F-ViT's data pipelines (CLIPSelf's): large-scale jitter for training (resize to 0.1-2.0 x the input
# size, crop, flip, pad) and resize-and-pad for testing. The steps declare no size: when a config is
# loaded (detection.config_file.load_config, used by every tool) the config's image_size becomes the
# scale of Resize / RandomResize, the crop_size of RandomCrop and the size of Pad, in these pipelines
# and in every dataloader's; a step that declares its size keeps it.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomResize", ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_type="absolute_range", recompute_bbox=True, allow_negative_crop=True),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="Pad"),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", keep_ratio=True),
    dict(type="Pad"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
