# F-ViT with a frozen FG-CLIP ViT-B/16 on OV-COCO (paper: AP50 novel / base / all 35.1 / 51.7 / 47.4),
# as CLIPSelf's F-ViT/configs/ov_coco/fvit_vitb16_upsample_fpn_bs64_3e_ovcoco_eva_original.py
# (wusize/CLIPSelf@1c7fe9c) with FG-CLIP in place of EVA-CLIP: blocks 3, 5, 7, 11; FPN and head
# convs with SyncBN; RPN with 2 convs; 4 conv + 2 fc shared head, separate cls / reg fcs 512 wide
# (the embedding width); learned temperature 50, CLIP temperature 75, alpha 0.1, beta 0.8; class
# weights base 1 / novel 0 (out of the softmax) / background 0.6; 8 GPUs x 8 images, 3 epochs,
# AdamW 1e-4, 640 x 640 large-scale jitter. Differences: docs/detection.md ("Against the reference").
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
            # 65 classes + "background", CLIPSelf's 63 prompts (the reference's
            # coco_with_background_evaclip_vitb_16.pt, embedded by FG-CLIP's text tower).
            class_embeddings="data/embeddings/ov_coco_fg-clip-base.pt",
            class_names=_base_.classes,
            novel_classes=_base_.novel_classes,
        )
    ),
)
