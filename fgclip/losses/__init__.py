"""FG-CLIP and FG-CLIP 2 training losses (small ``nn.Module`` classes, open_clip style).

All losses L2-normalise their inputs, take log-scale temperatures as tensors owned by the
model (``exp`` unclamped, as the official code; see :mod:`.temperature` for CLIP's clamp of
the parameters), and combine the batch over ranks through :mod:`fgclip.distributed` when a
process group is initialised.
"""
from .combined import REGION_SCOPES, FGCLIP2Loss, FGCLIPLoss
from .contrastive import GlobalContrastiveLoss, HardNegativeLoss, RegionalContrastiveLoss, RegionToAllTextsLoss
from .fgclip2 import CrossModalRankLoss, SigmoidGlobalLoss, TextualIntraModalContrastiveLoss
from .temperature import clamp_logit_scales, copy_logit_scale_to_region_scales

__all__ = [
    "REGION_SCOPES",
    "CrossModalRankLoss",
    "FGCLIP2Loss",
    "FGCLIPLoss",
    "GlobalContrastiveLoss",
    "HardNegativeLoss",
    "RegionToAllTextsLoss",
    "RegionalContrastiveLoss",
    "SigmoidGlobalLoss",
    "TextualIntraModalContrastiveLoss",
    "clamp_logit_scales",
    "copy_logit_scale_to_region_scales",
]
