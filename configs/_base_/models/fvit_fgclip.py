# F-ViT (CLIPSelf's open-vocabulary Faster R-CNN) on a frozen FG-CLIP ViT-B/16, laid out as
# CLIPSelf's F-ViT/configs/ov_coco/fvit_vitb16_upsample_fpn_bs64_3e_ovcoco_eva_original.py
# (wusize/CLIPSelf@1c7fe9c). The top-level configs set the FG-CLIP checkpoint, the block indices,
# the class-embedding file and the class lists.
norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    type="FViT",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        # Deliberate difference: CLIP's normalisation on 0-255 RGB pixels, the statistics the
        # frozen tower was trained with (the reference normalises with ImageNet's
        # 123.675/116.28/103.53 and 58.395/57.12/57.375).
        mean=[122.7709383, 116.7460125, 104.09373615],
        std=[68.5005327, 66.6321579, 70.32316305],
        bgr_to_rgb=True,
        pad_size_divisor=32,  # a multiple of 2 x patch size
    ),
    backbone=dict(
        type="FGCLIPViT",
        checkpoint="checkpoints/fg-clip-base",
        out_indices=(3, 5, 7, 11),
        norm_cfg=norm_cfg,
    ),
    neck=dict(type="FPN", in_channels=[768, 768, 768, 768], out_channels=256, num_outs=5, norm_cfg=norm_cfg),
    rpn_head=dict(
        type="FViTRPNHead",  # mmdet's RPNHead, proposals decoded in float32 under --amp
        in_channels=256,
        feat_channels=256,
        anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        num_convs=2,
    ),
    roi_head=dict(
        type="FViTRoIHead",
        bbox_roi_extractor=dict(
            type="SingleRoIExtractor",
            roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        bbox_head=dict(
            type="FViTBBoxHead",
            class_embeddings="data/embeddings/ov_coco_fg-clip-base.pt",
            in_channels=256,
            roi_feat_size=7,
            conv_out_channels=256,
            norm_cfg=norm_cfg,
            # 4 shared convs, 2 shared fcs (+ReLU), 1 classification fc (+ReLU) giving the region
            # embedding, 1 regression fc (+ReLU); every fc is as wide as the class embeddings
            # (512 for ViT-B/16, 768 for ViT-L/14).
            num_shared_convs=4,
            num_shared_fcs=2,
            num_cls_fcs=1,
            num_reg_fcs=1,
            temperature=50.0,  # a learnable scalar (the reference's learned_temperature)
            learn_bg=False,  # the background is the fixed "background" text embedding
            clip_temperature=75.0,
            alpha=0.1,
            beta=0.8,
            background_weight=0.6,
            novel_weight=0.0,
            reg_class_agnostic=True,
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2]
            ),
            # Novel classes (weight 0) leave the softmax: the reference's CustomCrossEntropyLoss.
            loss_cls=dict(type="MaskedCrossEntropyLoss", loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
    ),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1
            ),
            sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(
                type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1
            ),
            sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
            pos_weight=-1,
            debug=False,
        ),
    ),
    test_cfg=dict(
        rpn=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.01, nms=dict(type="nms", iou_threshold=0.4), max_per_img=100),
    ),
)
