"""RPN head whose stacked 3x3 convs carry a norm layer (CLIPSelf's OV-LVIS RPN)."""
from __future__ import annotations

from mmcv.cnn import ConvModule
from torch import nn

from mmdet.models.dense_heads import RPNHead
from mmdet.registry import MODELS


@MODELS.register_module()
class NormedRPNHead(RPNHead):
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
