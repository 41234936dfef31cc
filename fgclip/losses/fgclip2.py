"""FG-CLIP 2 losses: sigmoid global loss, textual intra-modal contrastive (TIC) loss and
cross-modal rank loss with a threshold synchronised across ranks.

Same conventions as :mod:`fgclip.losses.contrastive` (features normalised inside, float32
outside autocast, log scales passed in and used as ``exp(logit_scale)`` unclamped, per-rank
values whose mean over ranks is the joined-batch loss).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .utils import (
    batch_count,
    check_candidates,
    check_features,
    check_paired,
    connected_zero,
    normalize,
    outside_autocast,
    scale_from_log,
)


class SigmoidGlobalLoss(nn.Module):
    """SigLIP-style pairwise sigmoid loss between images and one or more caption sets.

    ``logits = exp(t) * I @ T.T + b``; label +1 on matching pairs and -1 elsewhere;
    per caption set ``-sum(log sigmoid(label * logits)) / B``, summed over sets (short +
    long). Across ranks the captions are all-gathered with gradients and each rank scores
    its B local images against every gathered caption (every rank must hold B images).
    """

    def __init__(self, across_ranks: bool = True):
        super().__init__()
        self.across_ranks = across_ranks

    @outside_autocast
    def per_text_losses(
        self,
        image_embeds: torch.Tensor,
        text_embeds: Sequence[torch.Tensor],
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> list[torch.Tensor]:
        """One loss per caption set; image_embeds (B, D), each text (B, D), scalar scale and bias."""
        check_paired(image_embeds, text_embeds, "sigmoid")
        batch_size = image_embeds.shape[0]
        images = normalize(image_embeds)
        texts = [normalize(text) for text in text_embeds]
        if self.across_ranks and distributed.get_world_size() > 1:
            gathered = distributed.all_gather_with_grad(torch.cat(texts, dim=1))
            all_texts = list(gathered.split(images.shape[1], dim=1))
            offset = distributed.get_rank() * batch_size
        else:
            all_texts, offset = texts, 0
        num_columns = all_texts[0].shape[0]
        rows = torch.arange(batch_size, device=images.device)
        labels = -torch.ones(batch_size, num_columns, dtype=images.dtype, device=images.device)
        labels[rows, rows + offset] = 1.0
        scale = scale_from_log(logit_scale)
        return [
            -F.logsigmoid(labels * (scale * images @ columns.T + logit_bias)).sum() / batch_size
            for columns in all_texts
        ]

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor | Sequence[torch.Tensor],
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Sum of :meth:`per_text_losses` over the caption sets."""
        if isinstance(text_embeds, torch.Tensor):
            text_embeds = [text_embeds]
        return torch.stack(self.per_text_losses(image_embeds, text_embeds, logit_scale, logit_bias)).sum()


class TextualIntraModalContrastiveLoss(nn.Module):
    """Textual intra-modal contrastive (TIC) loss over the region captions of a batch.

    With t_i the L2-normalised caption embeddings (M of them, local to the rank):

        S_ij  = <t_i, t_j>
        S'_ij = 0 if i == j or S_ij > duplicate_threshold (0.95: near-duplicates are not
                negatives), else S_ij
        L     = (1 / M) * sum_i log sum_{j in top_k(S'_i)} exp(S'_ij),   k = min(top_k, M)

    The top-k is taken over the whole row of S' (the zeroed entries keep the value 0 and
    can be selected). No temperature is applied. M = 0 gives a connected zero.
    """

    def __init__(self, top_k: int = 10, duplicate_threshold: float = 0.95):
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {top_k}")
        self.top_k = top_k
        self.duplicate_threshold = duplicate_threshold

    @outside_autocast
    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """text_embeds: (M, D) region-caption embeddings -> scalar loss."""
        check_features("text_embeds", text_embeds, 2)
        num_texts = text_embeds.shape[0]
        if num_texts == 0:
            return connected_zero(text_embeds)
        texts = normalize(text_embeds)
        similarity = texts @ texts.T
        dropped = torch.eye(num_texts, dtype=torch.bool, device=texts.device) | (
            similarity.detach() > self.duplicate_threshold
        )
        similarity = similarity.masked_fill(dropped, 0.0)
        top = similarity.topk(min(self.top_k, num_texts), dim=1).values
        return torch.logsumexp(top, dim=1).mean()


class CrossModalRankLoss(nn.Module):
    """Cross-modal rank loss with a threshold synchronised across ranks.

    For each region r with positive score s_pos_r and valid negative scores s_neg_rk
    (cosine similarities, times ``exp(logit_scale)`` when a scale is given):

        L = mean over valid (r, k) of relu(theta + s_neg_rk - s_pos_r)

    The threshold theta is module state (buffer ``theta``, float64, saved in
    ``state_dict``). In training mode it is updated *before use* at every step from the
    current batch: ``theta_batch = mean(s_pos) - mean(s_neg)`` over all regions and all
    valid negatives, with the sums and counts all-reduced over ranks (exact joined-batch
    means, no gradient), clamped to ``[theta_min, theta_max]`` (0 and 10). With ``momentum = 0`` (default: the plain reading
    of FG-CLIP 2) ``theta = theta_batch``; with ``momentum = m > 0`` it is an exponential
    moving average ``theta = m * theta + (1 - m) * theta_batch`` started at the first
    batch value. In eval mode the stored theta is used unchanged. A batch without any
    valid negative leaves theta as it is and gives a connected zero.
    """

    theta: torch.Tensor
    num_updates: torch.Tensor

    def __init__(
        self,
        theta_min: float = 0.0,
        theta_max: float = 10.0,
        momentum: float = 0.0,
        across_ranks: bool = True,
    ):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {momentum}")
        self.theta_min, self.theta_max, self.momentum = theta_min, theta_max, momentum
        self.across_ranks = across_ranks
        self.register_buffer("theta", torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_theta(self, positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> None:
        """Update theta from this step's (flat) positive and valid negative scores of all ranks."""
        stats = torch.stack(
            [
                positive_scores.double().sum(),
                torch.tensor(float(positive_scores.numel()), dtype=torch.float64, device=positive_scores.device),
                negative_scores.double().sum(),
                torch.tensor(float(negative_scores.numel()), dtype=torch.float64, device=negative_scores.device),
            ]
        )
        if self.across_ranks:
            stats = distributed.all_reduce_sum(stats)
        positive_sum, positive_count, negative_sum, negative_count = stats.tolist()
        if positive_count == 0 or negative_count == 0:
            return
        batch_theta = positive_sum / positive_count - negative_sum / negative_count
        batch_theta = min(max(batch_theta, self.theta_min), self.theta_max)
        if self.momentum > 0 and int(self.num_updates) > 0:
            batch_theta = self.momentum * float(self.theta) + (1.0 - self.momentum) * batch_theta
        self.theta.fill_(batch_theta)
        self.num_updates += 1

    @outside_autocast
    def forward(
        self,
        region_embeds: torch.Tensor,
        candidate_embeds: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
        logit_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            region_embeds: (R, D) RoI features.
            candidate_embeds: (R, 1 + N, D) texts per region, positive first.
            candidate_mask: optional (R, 1 + N) bool, False on missing negatives.
            logit_scale: optional scalar log scale applied to the cosine similarities.
        """
        mask = check_candidates(region_embeds, candidate_embeds, candidate_mask)
        scores = torch.einsum("rd,rkd->rk", normalize(region_embeds), normalize(candidate_embeds))
        if logit_scale is not None:
            scores = scale_from_log(logit_scale) * scores
        positive, negative, negative_mask = scores[:, 0], scores[:, 1:], mask[:, 1:]
        if self.training:
            self.update_theta(positive.detach(), negative.detach()[negative_mask])
        world_size, total = batch_count(int(negative_mask.sum()), scores.device, self.across_ranks)
        if total == 0:
            return connected_zero(region_embeds, candidate_embeds, logit_scale)
        theta = self.theta.to(scores.dtype)
        hinge = F.relu(theta + negative - positive.unsqueeze(1))
        return hinge[negative_mask].sum() * world_size / total
