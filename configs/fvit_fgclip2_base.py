# F-ViT with a frozen FG-CLIP 2 base (SigLIP 2 NaFlex ViT-B/16) on OV-COCO: the FG-CLIP recipe
# with the FG-CLIP 2 backbone, SigLIP's normalisation and region-text class embeddings.
#   python tools/dump_class_embeddings.py --config configs/fvit_fgclip2_base.py
#   torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip2_base.py
_base_ = [
    "_base_/models/fvit_fgclip.py",
    "_base_/datasets/ov_coco.py",
    "_base_/schedules/fvit_3e.py",
    "_base_/default_runtime.py",
]

model = dict(
    # SigLIP's normalisation on 0-255 RGB pixels: (x / 255 - 0.5) / 0.5.
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(type="FGCLIPViT", checkpoint="checkpoints/fg-clip2-base", out_indices=(3, 5, 7, 11)),
    neck=dict(in_channels=[768, 768, 768, 768]),
    roi_head=dict(
        bbox_head=dict(
            class_embeddings="data/embeddings/ov_coco_fg-clip2-base.pt",
            class_names=_base_.classes,
            novel_classes=_base_.novel_classes,
        )
    ),
)
