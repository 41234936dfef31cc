# F-ViT with a frozen FG-CLIP ViT-B/16 on OV-COCO (paper: AP50 novel / base / all 35.1 / 51.7 / 47.4).
# 8 GPUs x 8 images, 3 epochs, 640 x 640 large-scale jitter.
#   python tools/dump_class_embeddings.py --config configs/fvit_fgclip_b16.py
#   torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip_b16.py
_base_ = [
    "_base_/models/fvit_fgclip.py",
    "_base_/datasets/ov_coco.py",
    "_base_/schedules/fvit_3e.py",
    "_base_/default_runtime.py",
]

model = dict(
    backbone=dict(checkpoint="checkpoints/fg-clip-base", out_indices=(3, 5, 7, 11)),
    neck=dict(in_channels=[768, 768, 768, 768]),
    roi_head=dict(
        bbox_head=dict(
            class_embeddings="data/embeddings/ov_coco_fg-clip-base.pt",
            class_names=_base_.classes,
            novel_classes=_base_.novel_classes,
        )
    ),
)
