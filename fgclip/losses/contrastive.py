"""Contrastive losses: FG-CLIP's global, regional and hard-negative losses, and the
region-vs-all-texts InfoNCE of FG-CLIP 2's hard-negative block.

Conventions shared by every loss here:

* Features are L2-normalised inside the loss (raw or normalised inputs both work) and
  the loss is computed in float32 at least, outside any autocast region.
* Logit scales are passed to ``forward`` as log-scale tensors owned by the model; the
  loss uses ``exp(logit_scale)`` unclamped, as the official FG-CLIP code does.
* With ``across_ranks=True`` and an initialised process group the loss combines the
  batch of all ranks (see :mod:`fgclip.distributed` for the gradient convention): each
  rank returns a value whose mean over ranks equals the loss of the joined batch.
  Every rank must then call the loss, with the same set of inputs, at every step.
  With ``across_ranks=False`` each rank's loss is that of its own rows only (the official
  FG-CLIP regional and hard-negative terms); DDP then averages the per-rank gradients.
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


class GlobalContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between images and one or more sets of captions (weight 1 each).

    Across ranks, images and captions are all-gathered with gradients and each rank
    scores its local rows against all gathered columns with labels ``rank * B + arange(B)``
    (open_clip's "local loss"). Per caption set:
    ``(CE(s * I_local @ T_all.T, labels) + CE(s * T_local @ I_all.T, labels)) / 2``.
    Every rank must hold the same batch size B.
    """

    def __init__(self, across_ranks: bool = True):
        super().__init__()
        self.across_ranks = across_ranks

    @outside_autocast
    def per_text_losses(
        self, image_embeds: torch.Tensor, text_embeds: Sequence[torch.Tensor], logit_scale: torch.Tensor
    ) -> list[torch.Tensor]:
        """One loss per caption set.

        Args:
            image_embeds: (B, D) image embeddings.
            text_embeds: caption embeddings, each (B, D), row i paired with image i.
            logit_scale: scalar log temperature.
        """
        check_paired(image_embeds, text_embeds, "global")
        batch_size = image_embeds.shape[0]
        features = [normalize(image_embeds)] + [normalize(text) for text in text_embeds]
        if self.across_ranks and distributed.get_world_size() > 1:
            gathered = distributed.all_gather_with_grad(torch.cat(features, dim=1))
            columns = list(gathered.split(features[0].shape[1], dim=1))
            offset = distributed.get_rank() * batch_size
        else:
            columns, offset = features, 0
        labels = torch.arange(batch_size, device=image_embeds.device) + offset
        scale = scale_from_log(logit_scale)
        image, all_images = features[0], columns[0]
        losses = []
        for text, all_texts in zip(features[1:], columns[1:]):
            image_to_text = F.cross_entropy(scale * image @ all_texts.T, labels)
            text_to_image = F.cross_entropy(scale * text @ all_images.T, labels)
            losses.append((image_to_text + text_to_image) / 2)
        return losses

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor | Sequence[torch.Tensor],
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        """Sum of :meth:`per_text_losses` over the caption sets (e.g. long and short)."""
        if isinstance(text_embeds, torch.Tensor):
            text_embeds = [text_embeds]
        return torch.stack(self.per_text_losses(image_embeds, text_embeds, logit_scale)).sum()


class RegionalContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between region (RoI) features and their region captions.

    Only valid boxes are passed in (K rows, K may be 0 or 1). By default each rank
    contrasts its own K_r boxes and returns ``mean_i (CE_region_i + CE_text_i) / 2`` over
    them, as the official FG-CLIP code does. With ``across_ranks`` the region and caption
    features of all ranks are gathered (variable K per rank, padded and masked), so every
    region also sees the other ranks' captions as negatives; with K_total boxes over all
    ranks, rank r then returns ``world_size / K_total * sum_i (CE_region_i + CE_text_i) / 2``
    over its K_r rows. With no box (on this rank, or anywhere with ``across_ranks``) the
    result is a connected zero.
    """

    def __init__(self, across_ranks: bool = False):
        super().__init__()
        self.across_ranks = across_ranks

    @outside_autocast
    def forward(
        self, region_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            region_embeds: (K, D) RoI features of the valid boxes.
            text_embeds: (K, D) embeddings of their captions, row-aligned.
            logit_scale: scalar log temperature (``logit_scale_finegraind``).
        """
        check_features("region_embeds", region_embeds, 2)
        if text_embeds.shape != region_embeds.shape:
            raise ValueError(
                f"text_embeds: expected shape {tuple(region_embeds.shape)} like region_embeds, "
                f"got {tuple(text_embeds.shape)}"
            )
        regions, texts = normalize(region_embeds), normalize(text_embeds)
        num_local, device = regions.shape[0], regions.device
        if self.across_ranks and distributed.get_world_size() > 1:
            gathered, valid, counts = distributed.all_gather_padded_with_grad(torch.cat([regions, texts], dim=1))
            all_regions, all_texts = gathered.split(regions.shape[1], dim=1)
            offset, world_size, total = distributed.get_rank() * max(counts), len(counts), sum(counts)
        else:
            all_regions, all_texts, valid = regions, texts, None
            offset, world_size, total = 0, 1, num_local
        if total == 0:
            return connected_zero(region_embeds, text_embeds, logit_scale)
        scale = scale_from_log(logit_scale)
        region_logits = scale * regions @ all_texts.T
        text_logits = scale * texts @ all_regions.T
        if valid is not None:
            region_logits = region_logits.masked_fill(~valid, float("-inf"))
            text_logits = text_logits.masked_fill(~valid, float("-inf"))
        labels = torch.arange(num_local, device=device) + offset
        loss_sum = F.cross_entropy(region_logits, labels, reduction="sum") + F.cross_entropy(
            text_logits, labels, reduction="sum"
        )
        return loss_sum / 2 * world_size / total


class RegionCandidateLoss(nn.Module):
    """Base of the losses over each region's candidate texts (its positive caption first, then its
    hard negatives): checks the inputs, counts the regions (summed over ranks with ``across_ranks``)
    and divides the subclass's summed loss by that count, times the world size, so that the mean over
    ranks is the joined-batch mean. With no region (on this rank, or anywhere with ``across_ranks``)
    the result is a connected zero."""

    def __init__(self, across_ranks: bool = False):
        super().__init__()
        self.across_ranks = across_ranks

    @outside_autocast
    def forward(
        self,
        region_embeds: torch.Tensor,
        candidate_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            region_embeds: (R, D) RoI features.
            candidate_embeds: (R, 1 + N, D) texts per region, positive first (default N = 10).
            logit_scale: scalar log temperature (``logit_scale_hardneg``).
            candidate_mask: optional (R, 1 + N) bool, False on missing negatives (padding);
                column 0 must be True.
        """
        mask = check_candidates(region_embeds, candidate_embeds, candidate_mask)
        world_size, total = batch_count(region_embeds.shape[0], region_embeds.device, self.across_ranks)
        if total == 0:
            return connected_zero(region_embeds, candidate_embeds, logit_scale)
        summed = self.summed_loss(normalize(region_embeds), normalize(candidate_embeds), scale_from_log(logit_scale),
                                  mask, world_size)
        return summed * world_size / total

    def summed_loss(self, regions: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor,
                    world_size: int) -> torch.Tensor:
        """The loss summed over this rank's regions, from normalised (R, D) ``regions`` and (R, 1 + N, D)
        ``candidates``, the scale ``exp(logit_scale)`` and the (R, 1 + N) candidate mask."""
        raise NotImplementedError


class HardNegativeLoss(RegionCandidateLoss):
    """Per region, (1 + N)-way cross-entropy over its positive caption and N negatives.

    ``loss_r = -log softmax(s * <region_r, candidate_rk>)_0`` over the unmasked candidates
    k (the positive is candidate 0), averaged over this rank's regions by default, as the
    official FG-CLIP code does. With ``across_ranks`` it is averaged over the regions of the
    whole batch (:class:`RegionCandidateLoss`).
    """

    def summed_loss(self, regions, candidates, scale, mask, world_size):
        logits = scale * torch.einsum("rd,rkd->rk", regions, candidates)
        logits = logits.masked_fill(~mask, float("-inf"))
        targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, targets, reduction="sum")


class RegionToAllTextsLoss(RegionCandidateLoss):
    """Region-vs-all-texts InfoNCE (FG-CLIP 2's hard-negative block, weight 0.6 there).

    Region -> text: each region is scored against every valid candidate text of the batch
    (all regions' positives and hard negatives) and the target is its own positive.
    Text -> region: each region's positive is scored against every region, the target its
    own region. Both are averaged over the regions of the whole batch (with
    ``across_ranks``, texts and regions are gathered over ranks) and the loss is their mean,
    as upstream FG-CLIP 2 computes it.
    """

    def __init__(self, across_ranks: bool = True):
        super().__init__(across_ranks)

    def summed_loss(self, regions, candidates, scale, mask, world_size):
        texts = candidates[mask]  # (M, D), region-major; each region's positive first
        per_region = mask.sum(dim=1)
        positive_index = per_region.cumsum(0) - per_region
        own_region = torch.arange(regions.shape[0], device=regions.device)
        region_to_text = self._cross_entropy(scale * regions, texts, positive_index, world_size)
        text_to_region = self._cross_entropy(scale * texts[positive_index], regions, own_region, world_size)
        return (region_to_text + text_to_region) / 2

    @staticmethod
    def _cross_entropy(queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, world_size: int):
        """Summed cross-entropy of ``queries`` against this rank's ``keys`` (or all ranks' keys)."""
        if world_size > 1:
            keys, valid, counts = distributed.all_gather_padded_with_grad(keys)
            targets = targets + distributed.get_rank() * max(counts)
            logits = (queries @ keys.T).masked_fill(~valid, float("-inf"))
        else:
            logits = queries @ keys.T
        return F.cross_entropy(logits, targets, reduction="sum")
