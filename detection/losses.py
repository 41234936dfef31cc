"""Open-vocabulary classification loss: cross-entropy over the trained (non-zero weight) classes only."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdet.models.losses import CrossEntropyLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS

# A class weight below this is "not trained": its logit is -inf (CLIPSelf F-ViT's threshold,
# wusize/CLIPSelf@1c7fe9c F-ViT/models/custom_losses.py).
MASK_BELOW = 1e-5


def masked_cross_entropy(
    pred: Tensor,
    label: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | None = None,
    class_weight: Tensor | None = None,
    ignore_index: int | None = -100,
    avg_non_ignore: bool = False,
) -> Tensor:
    """Softmax cross-entropy in which every class with ``class_weight < 1e-5`` gets logit -inf.

    Those classes (the novel ones) leave the softmax denominator, so nothing pushes their scores
    down. Each sample's loss is then multiplied by its target's class weight (a sample whose target
    is masked contributes 0) and by its sample ``weight``, and reduced as mmdet's ``cross_entropy``.

    Args:
        pred: (N, C + 1) logits. label: (N,) targets.
        class_weight: (C + 1,) weights; ``None`` is plain cross-entropy.
    """
    ignore_index = -100 if ignore_index is None else ignore_index
    valid = label != ignore_index
    safe_label = torch.where(valid, label, torch.zeros_like(label))
    if class_weight is None:
        log_probs = F.log_softmax(pred, dim=-1)
        sample_weight = valid.to(pred.dtype)
    else:
        masked = class_weight < MASK_BELOW
        log_probs = F.log_softmax(pred.masked_fill(masked, float("-inf")), dim=-1)
        sample_weight = torch.where(valid, class_weight[safe_label], torch.zeros_like(class_weight[safe_label]))
        valid = valid & ~masked[safe_label]
    target_log_prob = log_probs.gather(1, safe_label[:, None])[:, 0]
    loss = torch.where(valid, -target_log_prob * sample_weight, torch.zeros_like(target_log_prob))
    if avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = (label != ignore_index).sum().item()
    return weight_reduce_loss(loss, weight=None if weight is None else weight.float(), reduction=reduction, avg_factor=avg_factor)


@MODELS.register_module()
class MaskedCrossEntropyLoss(CrossEntropyLoss):
    """mmdet's softmax ``CrossEntropyLoss`` with :func:`masked_cross_entropy`: classes weighted
    below 1e-5 (novel) are excluded from the softmax instead of only from the target weighting.

    Args:
        class_weight: per-class weights, background last (F-ViT: base 1, novel 0, background 0.6).
        Others as ``mmdet.models.losses.CrossEntropyLoss`` (softmax only).
    """

    def __init__(self, class_weight: list[float] | None = None, reduction: str = "mean", loss_weight: float = 1.0,
                 ignore_index: int | None = None, avg_non_ignore: bool = False):
        super().__init__(use_sigmoid=False, use_mask=False, reduction=reduction, class_weight=class_weight,
                         ignore_index=ignore_index, loss_weight=loss_weight, avg_non_ignore=avg_non_ignore)
        self.cls_criterion = masked_cross_entropy
