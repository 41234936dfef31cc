"""F-ViT's RPN heads: proposals decoded in float32 under mixed precision, and a head whose stacked
3x3 convs carry a norm layer (CLIPSelf's OV-LVIS RPN)."""
from __future__ import annotations

from mmcv.cnn import ConvModule
from torch import Tensor, nn

from mmdet.models.dense_heads import RPNHead
from mmdet.registry import MODELS


@MODELS.register_module()
class FViTRPNHead(RPNHead):
    """mmdet's ``RPNHead`` that turns its outputs into proposals in float32, as the reference's
    mmdet 2.x did under fp16 (``force_fp32`` on ``get_bboxes``). Under autocast the outputs are
    float16 / bfloat16: mmdet 3.x would build the anchors in that dtype (box corners 2-4 px
    apart at 512-1024 px in bfloat16) and mmcv's nms has no bfloat16 kernel."""

    def predict_by_feat(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], *args, **kwargs):
        return super().predict_by_feat([s.float() for s in cls_scores], [b.float() for b in bbox_preds], *args, **kwargs)


@MODELS.register_module()
class NormedRPNHead(FViTRPNHead):
    """mmdet's ``RPNHead`` with ``num_convs`` > 1 convs, each conv-norm-ReLU (``norm_cfg``)."""

    def __init__(self, in_channels: int, norm_cfg: dict | None = None, num_convs: int = 2, **kwargs):
        if num_convs < 2:
            raise ValueError(f"NormedRPNHead needs num_convs >= 2 (a plain RPNHead has one conv), got {num_convs}")
        self.norm_cfg = norm_cfg
        super().__init__(in_channels, num_convs=num_convs, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        self.rpn_conv = nn.Sequential(*[
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3, padding=1,
                       norm_cfg=self.norm_cfg, inplace=False)
            for i in range(self.num_convs)
        ])
