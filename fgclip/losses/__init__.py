"""FG-CLIP and FG-CLIP 2 training losses (small ``nn.Module`` classes, open_clip style).

All losses L2-normalise their inputs, take log-scale temperatures as tensors owned by the
model (``exp`` clamped at 100), and combine the batch over ranks through
:mod:`fgclip.distributed` when a process group is initialised.
"""
from .combined import FGCLIP2Loss, FGCLIPLoss
from .contrastive import GlobalContrastiveLoss, HardNegativeLoss, RegionalContrastiveLoss, RegionToAllTextsLoss
from .fgclip2 import CrossModalRankLoss, SigmoidGlobalLoss, TextualIntraModalContrastiveLoss

__all__ = [
    "CrossModalRankLoss",
    "FGCLIP2Loss",
    "FGCLIPLoss",
    "GlobalContrastiveLoss",
    "HardNegativeLoss",
    "RegionToAllTextsLoss",
    "RegionalContrastiveLoss",
    "SigmoidGlobalLoss",
    "TextualIntraModalContrastiveLoss",
]
