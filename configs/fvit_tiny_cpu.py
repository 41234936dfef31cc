# A few-second F-ViT for CPU smoke runs and tests: a tiny random 4-block FG-CLIP (patch 8),
# 64 x 64 synthetic shape scenes, 7 shape classes of which "star" and "cross" are novel.
# Paths are relative to the working directory (the tests run from a temporary one).
# See docs/detection.md ("CPU smoke run") for how to write the data, model and embeddings.
_base_ = [
    "_base_/models/fvit_fgclip.py",
    "_base_/datasets/ov_coco.py",
    "_base_/schedules/fvit_3e.py",
    "_base_/default_runtime.py",
]
data_root = "work_dirs/tiny_cpu/shapes/"
image_size = (64, 64)
classes = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
novel_classes = ("star", "cross")

model = dict(
    data_preprocessor=dict(pad_size_divisor=16),
    backbone=dict(checkpoint="work_dirs/tiny_cpu/fgclip", out_indices=(0, 1, 2, 3), norm_cfg=dict(type="BN")),
    neck=dict(in_channels=[32, 32, 32, 32], out_channels=32, norm_cfg=dict(type="BN")),
    rpn_head=dict(in_channels=32, feat_channels=32, anchor_generator=dict(scales=[8], strides=[2, 4, 8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32, featmap_strides=[2, 4, 8, 16]),
        bbox_head=dict(
            class_embeddings="work_dirs/tiny_cpu/shapes_embeddings.pt",
            class_names=classes,
            novel_classes=novel_classes,
            in_channels=32,
            conv_out_channels=32,
            norm_cfg=dict(type="BN"),
        ),
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(sampler=dict(num=64)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100)),
)

# fvit_pipelines.py's pipelines, sized by image_size when the config is loaded (as the tools and
# tests do, with detection.config_file.load_config); training jitters the scale by 0.8-1.25 (the
# 64 x 64 scenes' shapes would vanish at 0.1) instead of 0.1-2.0.
train_pipeline = _base_.train_pipeline
train_pipeline[2].ratio_range = (0.8, 1.25)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file="annotations/instances_train.json",
        data_prefix=dict(img="train/"),
        metainfo=dict(classes=classes),
        novel_classes=novel_classes,
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file="annotations/instances_val.json",
        data_prefix=dict(img="val/"),
        metainfo=dict(classes=classes),
        novel_classes=novel_classes,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val.json", novel_classes=novel_classes)
test_evaluator = val_evaluator

train_cfg = dict(type="IterBasedTrainLoop", max_iters=20, val_interval=20, _delete_=True)
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=5)]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(by_epoch=False, interval=20), visualization=dict(draw=False))
log_processor = dict(by_epoch=False, window_size=5)
