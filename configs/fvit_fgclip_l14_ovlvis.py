# F-ViT with a frozen FG-CLIP ViT-L/14 (336 px) on OV-LVIS (boxes), as CLIPSelf's
# F-ViT/configs/ov_lvis/fvit_vitl14_upsample_fpn_bs64_4x_ovlvis_eva_original.py (wusize/CLIPSelf@1c7fe9c)
# without its mask head: 896 x 896 jitter (a 64 x 64 patch grid), beta 0.4 (the reference notes that
# 0.6 or 0.8 raise AP_r).
#   python tools/dump_class_embeddings.py --config configs/fvit_fgclip_l14_ovlvis.py
#   torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip_l14_ovlvis.py --amp
_base_ = ["fvit_fgclip_b16_ovlvis.py"]
image_size = (896, 896)

model = dict(
    data_preprocessor=dict(pad_size_divisor=28),
    backbone=dict(checkpoint="checkpoints/fg-clip-large", out_indices=(6, 10, 14, 23)),
    neck=dict(in_channels=[1024, 1024, 1024, 1024]),
    # Patch 14: pyramid strides 3.5, 7, 14, 28 and an FPN top level of 56.
    rpn_head=dict(anchor_generator=dict(strides=[3.5, 7, 14, 28, 56])),
    roi_head=dict(
        bbox_roi_extractor=dict(featmap_strides=[3.5, 7, 14, 28]),
        bbox_head=dict(class_embeddings="data/embeddings/ov_lvis_fg-clip-large.pt", beta=0.4),
    ),
)
