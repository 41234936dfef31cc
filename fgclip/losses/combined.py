"""Training objectives of FG-CLIP (v1, two stages) and FG-CLIP 2 built from the single losses."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .contrastive import GlobalContrastiveLoss, HardNegativeLoss, RegionalContrastiveLoss, RegionToAllTextsLoss
from .fgclip2 import CrossModalRankLoss, SigmoidGlobalLoss, TextualIntraModalContrastiveLoss

# Which batch FG-CLIP's regional and hard-negative terms use under torch.distributed:
# "rank" (each rank's own regions, the official code) or "global" (all ranks' regions).
REGION_SCOPES = ("rank", "global")


def _term_given(term: str, embeds: dict[str, torch.Tensor | None], scale: dict[str, torch.Tensor | None]) -> bool:
    """Whether a term is computed: some of its ``embeds`` are given; then all of them and its ``scale``
    must be (a ``ValueError`` names the missing ones)."""
    if all(value is None for value in embeds.values()):
        return False
    missing = [name for name, value in {**embeds, **scale}.items() if value is None]
    if missing:
        raise ValueError(f"{term} loss: missing input(s) {', '.join(missing)}")
    return True


def _regional_given(region_embeds, region_text_embeds, logit_scale_finegraind) -> bool:
    return _term_given("regional", {"region_embeds": region_embeds, "region_text_embeds": region_text_embeds},
                       {"logit_scale_finegraind": logit_scale_finegraind})


def _hard_negative_given(hard_region_embeds, hard_candidate_embeds, logit_scale_hardneg) -> bool:
    return _term_given("hard-negative",
                       {"hard_region_embeds": hard_region_embeds, "hard_candidate_embeds": hard_candidate_embeds},
                       {"logit_scale_hardneg": logit_scale_hardneg})


def _check_caption_sets(text_embeds: Mapping[str, torch.Tensor]) -> None:
    if not text_embeds:
        raise ValueError("text_embeds: needs at least one caption set")


def _add_global_terms(
    terms: dict[str, torch.Tensor], text_embeds: Mapping[str, torch.Tensor], losses: list[torch.Tensor]
) -> torch.Tensor:
    """Record ``global_<name>`` per caption set and their sum ``global``; return the sum."""
    for name, value in zip(text_embeds, losses):
        terms[f"global_{name}"] = value
    terms["global"] = torch.stack(losses).sum()
    return terms["global"]


class FGCLIPLoss(nn.Module):
    """FG-CLIP objective ``L = L_global + alpha * L_regional + beta * L_hard``.

    Stage 1 passes only the global inputs; stage 2 adds the region and hard-negative
    inputs (a term whose inputs are None is left out). Under ``torch.distributed`` every
    rank must pass the same set of terms (a rank without boxes passes (0, D) tensors).

    The global loss always scores each rank's rows against all ranks' columns. With
    ``region_scope="rank"`` (default, the official code) the regional InfoNCE contrasts each
    rank's own boxes and the hard-negative loss is averaged over each rank's regions; with
    ``"global"`` both use the regions of all ranks (their mean over ranks is then the
    joined-batch value).

    ``forward`` returns ``(total, terms)``: ``terms`` holds the detached, unweighted value
    of every computed term (``global_<name>`` per caption set, ``global``, ``regional``,
    ``hard_negative``) for logging.
    """

    def __init__(self, regional_weight: float = 0.1, hard_negative_weight: float = 0.5, region_scope: str = "rank"):
        super().__init__()
        if region_scope not in REGION_SCOPES:
            raise ValueError(f"region_scope: expected one of {', '.join(REGION_SCOPES)}, got {region_scope!r}")
        self.regional_weight = regional_weight
        self.hard_negative_weight = hard_negative_weight
        self.global_loss = GlobalContrastiveLoss()
        self.regional_loss = RegionalContrastiveLoss(across_ranks=region_scope == "global")
        self.hard_negative_loss = HardNegativeLoss(across_ranks=region_scope == "global")

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: Mapping[str, torch.Tensor],
        logit_scale: torch.Tensor,
        *,
        region_embeds: torch.Tensor | None = None,
        region_text_embeds: torch.Tensor | None = None,
        logit_scale_finegraind: torch.Tensor | None = None,
        hard_region_embeds: torch.Tensor | None = None,
        hard_candidate_embeds: torch.Tensor | None = None,
        hard_candidate_mask: torch.Tensor | None = None,
        logit_scale_hardneg: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """
        Args:
            image_embeds: (B, D) image embeddings.
            text_embeds: caption sets by name, each (B, D), e.g. ``{"long": ..., "short": ...}``.
            logit_scale: scalar log scale of the global loss.
            region_embeds, region_text_embeds: (K, D) RoI features and their captions.
            logit_scale_finegraind: scalar log scale of the regional loss.
            hard_region_embeds: (R, D) RoI features of the regions that have negatives.
            hard_candidate_embeds: (R, 1 + N, D) positive first, then the negatives.
            hard_candidate_mask: optional (R, 1 + N) bool, False on missing negatives.
            logit_scale_hardneg: scalar log scale of the hard-negative loss.
        """
        _check_caption_sets(text_embeds)
        terms: dict[str, torch.Tensor] = {}
        total = _add_global_terms(
            terms, text_embeds, self.global_loss.per_text_losses(image_embeds, list(text_embeds.values()), logit_scale)
        )
        if _regional_given(region_embeds, region_text_embeds, logit_scale_finegraind):
            terms["regional"] = self.regional_loss(region_embeds, region_text_embeds, logit_scale_finegraind)
            total = total + self.regional_weight * terms["regional"]
        if _hard_negative_given(hard_region_embeds, hard_candidate_embeds, logit_scale_hardneg):
            terms["hard_negative"] = self.hard_negative_loss(
                hard_region_embeds, hard_candidate_embeds, logit_scale_hardneg, hard_candidate_mask
            )
            total = total + self.hard_negative_weight * terms["hard_negative"]
        return total, {name: value.detach() for name, value in terms.items()}


class FGCLIP2Loss(nn.Module):
    """FG-CLIP 2 objective:

        L = L_sigmoid(short + long) + 0.2 * L_regional + 0.1 * L_TIC
            + 0.5 * (0.6 * L_region_to_all + 3 * L_hard + 0.4 * L_rank)

    ``L_regional`` uses ``logit_scale_finegraind``; the whole hard-negative block
    (region-vs-all-texts InfoNCE, 11-way CE, rank loss) uses ``logit_scale_hardneg``, so
    the rank loss scores are scaled similarities, the range where its [0, 10] clamp of
    theta is meaningful. TIC runs on the region captions. The rank loss's theta lives in
    this module's ``state_dict`` (save it with the training state to resume).

    ``forward`` returns ``(total, terms)`` with the detached, unweighted terms
    (``global_<name>``, ``global``, ``regional``, ``tic``, ``region_to_all``,
    ``hard_negative``, ``rank``, ``hard_block``) and ``rank_theta``.
    """

    def __init__(
        self,
        regional_weight: float = 0.2,
        tic_weight: float = 0.1,
        hard_block_weight: float = 0.5,
        region_to_all_weight: float = 0.6,
        hard_negative_weight: float = 3.0,
        rank_weight: float = 0.4,
        tic_top_k: int = 10,
        tic_duplicate_threshold: float = 0.95,
        rank_theta_max: float = 10.0,
        rank_momentum: float = 0.0,
        across_ranks: bool = True,
    ):
        super().__init__()
        self.regional_weight = regional_weight
        self.tic_weight = tic_weight
        self.hard_block_weight = hard_block_weight
        self.region_to_all_weight = region_to_all_weight
        self.hard_negative_weight = hard_negative_weight
        self.rank_weight = rank_weight
        self.global_loss = SigmoidGlobalLoss(across_ranks)
        self.regional_loss = RegionalContrastiveLoss(across_ranks)
        self.tic_loss = TextualIntraModalContrastiveLoss(tic_top_k, tic_duplicate_threshold)
        self.region_to_all_loss = RegionToAllTextsLoss(across_ranks)
        self.hard_negative_loss = HardNegativeLoss(across_ranks)
        self.rank_loss = CrossModalRankLoss(
            theta_max=rank_theta_max, momentum=rank_momentum, across_ranks=across_ranks
        )

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: Mapping[str, torch.Tensor],
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        *,
        region_embeds: torch.Tensor | None = None,
        region_text_embeds: torch.Tensor | None = None,
        logit_scale_finegraind: torch.Tensor | None = None,
        hard_region_embeds: torch.Tensor | None = None,
        hard_candidate_embeds: torch.Tensor | None = None,
        hard_candidate_mask: torch.Tensor | None = None,
        logit_scale_hardneg: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Arguments as :meth:`FGCLIPLoss.forward`, plus the scalar ``logit_bias`` of the sigmoid loss."""
        _check_caption_sets(text_embeds)
        terms: dict[str, torch.Tensor] = {}
        total = _add_global_terms(
            terms, text_embeds,
            self.global_loss.per_text_losses(image_embeds, list(text_embeds.values()), logit_scale, logit_bias),
        )
        if _regional_given(region_embeds, region_text_embeds, logit_scale_finegraind):
            terms["regional"] = self.regional_loss(region_embeds, region_text_embeds, logit_scale_finegraind)
            terms["tic"] = self.tic_loss(region_text_embeds)
            total = total + self.regional_weight * terms["regional"] + self.tic_weight * terms["tic"]
        if _hard_negative_given(hard_region_embeds, hard_candidate_embeds, logit_scale_hardneg):
            hard_inputs = (hard_region_embeds, hard_candidate_embeds)
            terms["region_to_all"] = self.region_to_all_loss(*hard_inputs, logit_scale_hardneg, hard_candidate_mask)
            terms["hard_negative"] = self.hard_negative_loss(*hard_inputs, logit_scale_hardneg, hard_candidate_mask)
            terms["rank"] = self.rank_loss(*hard_inputs, hard_candidate_mask, logit_scale_hardneg)
            terms["hard_block"] = (
                self.region_to_all_weight * terms["region_to_all"]
                + self.hard_negative_weight * terms["hard_negative"]
                + self.rank_weight * terms["rank"]
            )
            total = total + self.hard_block_weight * terms["hard_block"]
            terms["rank_theta"] = self.rank_loss.theta.clone()
        return total, {name: value.detach() for name, value in terms.items()}
