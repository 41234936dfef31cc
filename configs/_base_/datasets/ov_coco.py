# OV-COCO: COCO 2017 restricted to 65 classes; training sees the 48 base classes only,
# evaluation reports AP50 on the 17 novel, the 48 base and all 65 classes.
# Large-scale jitter at 640 x 640 (the ViT-B/16 input size). The classes and novel_classes are
# detection/ov_coco_classes.py's (the list OVCocoDataset and OVCocoAP50Metric default to).
_base_ = ["../../../detection/ov_coco_classes.py"]
dataset_type = "OVCocoDataset"
data_root = "data/coco/"
image_size = (640, 640)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomResize", scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_type="absolute_range", crop_size=image_size, recompute_bbox=True, allow_negative_crop=True),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="Pad", size=image_size),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="Pad", size=image_size),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file="annotations/instances_train2017.json",
        data_prefix=dict(img="train2017/"),
        metainfo=dict(classes=_base_.classes),
        novel_classes=_base_.novel_classes,
        base_only=True,
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017/"),
        metainfo=dict(classes=_base_.classes),
        novel_classes=_base_.novel_classes,
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

val_evaluator = dict(
    type="OVCocoAP50Metric", ann_file=data_root + "annotations/instances_val2017.json", novel_classes=_base_.novel_classes
)
test_evaluator = val_evaluator
