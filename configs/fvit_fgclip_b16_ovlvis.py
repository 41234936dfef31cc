# F-ViT with a frozen FG-CLIP ViT-B/16 on OV-LVIS (boxes): trained on the frequent + common classes,
# the 337 rare ones novel; reported: box AP_r / AP_c / AP_f / AP. Laid out as CLIPSelf's
# F-ViT/configs/ov_lvis/fvit_vitb16_upsample_fpn_bs64_4x_ovlvis_eva_original.py (wusize/CLIPSelf@1c7fe9c)
# without its mask head. 8 GPUs x 8 images, 48 epochs, 1024 x 1024 large-scale jitter.
#   python tools/dump_class_embeddings.py --config configs/fvit_fgclip_b16_ovlvis.py
#   torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip_b16_ovlvis.py --amp
_base_ = [
    "_base_/models/fvit_fgclip.py",
    "_base_/datasets/ov_lvis.py",
    "_base_/schedules/fvit_48e.py",
    "_base_/default_runtime.py",
]

model = dict(
    backbone=dict(checkpoint="checkpoints/fg-clip-base", out_indices=(3, 5, 7, 11)),
    neck=dict(in_channels=[768, 768, 768, 768]),
    # The reference's LVIS RPN: 2 convs, each with (MM)SyncBN.
    rpn_head=dict(type="NormedRPNHead", norm_cfg=dict(type="SyncBN", requires_grad=True)),
    roi_head=dict(
        bbox_head=dict(
            class_embeddings="data/embeddings/ov_lvis_fg-clip-base.pt",
            class_names=_base_.classes,
            novel_classes=_base_.novel_classes,
            background_weight=0.9,
            clip_temperature=50.0,
            alpha=0.1,
            beta=0.6,
        )
    ),
    train_cfg=dict(rcnn=dict(assigner=dict(match_low_quality=True))),
    test_cfg=dict(rcnn=dict(score_thr=0.0001, nms=dict(type="nms", iou_threshold=0.5), max_per_img=300)),
)
# As the reference: a checkpoint every epoch, only the latest kept.
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1, save_last=True))
