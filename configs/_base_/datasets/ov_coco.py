# OV-COCO: COCO 2017 restricted to 65 classes; training sees the 48 base classes only,
# evaluation reports AP50 on the 17 novel, the 48 base and all 65 classes.
# Large-scale jitter at 640 x 640 (the ViT-B/16 input size). The classes and novel_classes are
# detection/ov_coco_classes.py's (the list OVCocoDataset and OVCocoAP50Metric default to); the
# pipelines are fvit_pipelines.py's, sized by image_size when the config is loaded.
_base_ = ["../../../detection/ov_coco_classes.py", "fvit_pipelines.py"]
dataset_type = "OVCocoDataset"
data_root = "data/coco/"
image_size = (640, 640)

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
        pipeline=_base_.train_pipeline,
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
        pipeline=_base_.test_pipeline,
    ),
)
test_dataloader = val_dataloader

val_evaluator = dict(
    type="OVCocoAP50Metric", ann_file=data_root + "annotations/instances_val2017.json", novel_classes=_base_.novel_classes
)
test_evaluator = val_evaluator
