# F-ViT's data pipelines (CLIPSelf's): large-scale jitter for training (resize to 0.1-2.0 x the
# input size, crop, flip, pad) and resize-and-pad for testing. The input size is the dataset's
# image_size, which OVCocoDataset / OVLVISDataset fill in as the scale of Resize / RandomResize, the
# crop_size of RandomCrop and the size of Pad (detection.datasets.sized_pipeline): a config sets
# image_size on its datasets and keeps these pipelines.
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
