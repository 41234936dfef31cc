# F-ViT with a frozen FG-CLIP ViT-L/14 (336 px) on OV-COCO (paper: AP50 novel / base / all 41.2 / 58.0 / 53.6),
# as CLIPSelf's F-ViT/configs/ov_coco/fvit_vitl14_upsample_fpn_bs64_3e_ovcoco_eva_original.py
# (wusize/CLIPSelf@1c7fe9c) with FG-CLIP in place of EVA-CLIP: blocks 6, 10, 14, 23, head fcs 768
# wide (the embedding width), strides 3.5 ... 56; otherwise as configs/fvit_fgclip_b16.py.
# 8 GPUs x 8 images, 3 epochs, 896 x 896 large-scale jitter (a 64 x 64 patch grid).
#   python tools/dump_class_embeddings.py --config configs/fvit_fgclip_l14.py
#   torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip_l14.py
_base_ = [
    "_base_/models/fvit_fgclip.py",
    "_base_/datasets/ov_coco.py",
    "_base_/schedules/fvit_3e.py",
    "_base_/default_runtime.py",
]
image_size = (896, 896)

model = dict(
    data_preprocessor=dict(pad_size_divisor=28),
    backbone=dict(checkpoint="checkpoints/fg-clip-large", out_indices=(6, 10, 14, 23)),
    neck=dict(in_channels=[1024, 1024, 1024, 1024]),
    # Patch 14: pyramid strides 3.5, 7, 14, 28 and an FPN top level of 56.
    rpn_head=dict(anchor_generator=dict(strides=[3.5, 7, 14, 28, 56])),
    roi_head=dict(
        bbox_roi_extractor=dict(featmap_strides=[3.5, 7, 14, 28]),
        bbox_head=dict(
            class_embeddings="data/embeddings/ov_coco_fg-clip-large.pt",
            class_names=_base_.classes,
            novel_classes=_base_.novel_classes,
        ),
    ),
)
