"""One FG-CLIP (or FG-CLIP 2) training step as an ``nn.Module``, so DDP / DeepSpeed wrap the whole step.

The wrapper holds the model and the loss: the loss's state (e.g. FG-CLIP 2's rank-loss
threshold) is then part of every checkpoint and is restored on resume.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..losses import FGCLIP2Loss, FGCLIPLoss
from ..modeling_fgclip import FGCLIPModel
from ..modeling_fgclip2 import FGCLIP2Model

# Initial log temperature of the regional and hard-negative terms (CLIP's 1 / 0.07).
LOGIT_SCALE_INIT = 2.6592


def select_slots(
    short_text_inverse: torch.Tensor, short_text_ranges: dict[str, tuple[int, int]], kinds: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The unique rows of ``short_input_ids`` that the text slots of ``kinds`` use.

    Returns ``(rows, position, sizes)``: encode ``short_input_ids[rows]``, expand with
    ``[position]`` and split by ``sizes`` (one per kind, in slot order).
    """
    slots = [short_text_inverse[slice(*short_text_ranges[kind])] for kind in kinds]
    rows, position = torch.unique(torch.cat(slots), return_inverse=True)
    return rows, position, [len(slot) for slot in slots]


def region_loss_inputs(
    regions: torch.Tensor,
    texts: dict[str, torch.Tensor],
    hard_negative_region_index: torch.Tensor,
    logit_scale_finegraind: torch.Tensor,
    logit_scale_hardneg: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Keyword arguments of the losses' regional and hard-negative terms, for the kinds in ``texts``.

    Args:
        regions: (R, D) region features of the batch.
        texts: ``"region"`` (R, D) captions and / or ``"hard_negative"`` (H * (1 + N), D)
            candidates, positive first in each group of ``1 + N``.
        hard_negative_region_index: (H,) region of each group.
    Temperatures go out as 0-dim tensors: under DeepSpeed the trainer holds them as (1,) parameters.
    """
    extra = {}
    if "region" in texts:
        extra.update(region_embeds=regions, region_text_embeds=texts["region"],
                     logit_scale_finegraind=logit_scale_finegraind.reshape(()))
    if "hard_negative" in texts:
        groups = hard_negative_region_index.shape[0]
        candidates = texts["hard_negative"]
        width = candidates.shape[0] // groups if groups else 1
        extra.update(hard_region_embeds=regions[hard_negative_region_index],
                     hard_candidate_embeds=candidates.reshape(groups, width, candidates.shape[-1]),
                     logit_scale_hardneg=logit_scale_hardneg.reshape(()))
    return extra


class FGCLIPForTraining(nn.Module):
    """FG-CLIP model + objective. ``forward`` takes a `FineHARDCollator` batch.

    Per step: one vision pass (with dense features only when a regional or hard-negative
    term trains), one text-tower call for the long captions and one for the short-path texts
    of the terms that train (short captions, plus region captions and hard-negative
    candidates in stage 2), de-duplicated and padded to the longest of them.

    The temperatures of the terms that do not train (``logit_scale_finegraind`` without the
    regional term, ``logit_scale_hardneg`` without the hard-negative term) are frozen, so
    every trainable parameter gets a gradient at every step (DDP needs no search for unused
    parameters) and no optimizer touches them.

    Args:
        model: the FG-CLIP model being trained.
        loss: the objective (:class:`FGCLIPLoss`).
        regional / hard_negatives: whether the regional and hard-negative terms train.
    """

    # The loss is a per-batch mean: HF Trainer must not pass `num_items_in_batch` to forward.
    accepts_loss_kwargs = False

    def __init__(self, model: FGCLIPModel, loss: FGCLIPLoss, regional: bool = False, hard_negatives: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.regional = regional
        self.hard_negatives = hard_negatives
        self.text_tower_calls = 0
        model.logit_scale_finegraind.requires_grad_(regional)
        model.logit_scale_hardneg.requires_grad_(hard_negatives)

    @property
    def config(self):
        """The model's `FGCLIPConfig` (HF Trainer reads it, e.g. for DeepSpeed's ``auto`` bucket sizes)."""
        return self.model.config

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.model.activation_checkpointing_enable(**kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor,
        long_input_ids: torch.Tensor,
        short_input_ids: torch.Tensor,
        short_text_inverse: torch.Tensor,
        short_text_ranges: dict[str, tuple[int, int]],
        boxes: list[torch.Tensor],
        hard_negative_region_index: torch.Tensor,
        region_image_index: torch.Tensor | None = None,
        is_cn: torch.Tensor | None = None,
        skipped_records: list[str] | None = None,
    ) -> dict[str, Any]:
        """Arguments are the keys of a :class:`~fgclip.data.FineHARDCollator` batch (its layout
        is in `fgclip.data.collate`); ``region_image_index``, ``is_cn`` and ``skipped_records``
        are bookkeeping that the step does not need (``boxes`` already group the regions by image).

        Returns:
            ``{"loss": total (float32 scalar), "terms": {name: detached float32 value}}``.
        """
        model = self.model
        needs_regions = self.regional or self.hard_negatives
        image = model.encode_image(pixel_values, dense=needs_regions)
        long_embeds = model.get_text_features(long_input_ids, kind="long")
        kinds = ["short"] + ["region"] * self.regional + ["hard_negative"] * self.hard_negatives
        texts = self.encode_short_path(short_input_ids, short_text_inverse, short_text_ranges, kinds)
        self.text_tower_calls += 2

        extra = {}
        if needs_regions:
            extra = region_loss_inputs(model.pool_regions(image.dense_features, boxes), texts, hard_negative_region_index,
                                       model.logit_scale_finegraind, model.logit_scale_hardneg)
        total, terms = self.loss(
            image.image_embeds, {"long": long_embeds, "short": texts["short"]}, model.logit_scale.reshape(()), **extra
        )
        return {"loss": total, "terms": terms}

    def encode_short_path(
        self,
        short_input_ids: torch.Tensor,
        short_text_inverse: torch.Tensor,
        short_text_ranges: dict[str, tuple[int, int]],
        kinds: list[str],
    ) -> dict[str, torch.Tensor]:
        """Embed the short-path texts of ``kinds`` in one text-tower call.

        Only the unique rows that the slots of ``kinds`` refer to are encoded (stage 1 leaves
        the batch's region and negative texts out), cut to the longest of them: under the
        causal mask with first-eos pooling the columns after it change nothing.

        Returns:
            ``{kind: (slots of kind, D)}`` in slot order.
        """
        rows, position, sizes = select_slots(short_text_inverse, short_text_ranges, kinds)
        input_ids = short_input_ids[rows]
        if rows.numel() < short_input_ids.shape[0]:
            first_eos = (input_ids == self.model.config.text_config.eos_token_id).int().argmax(dim=1)
            input_ids = input_ids[:, : int(first_eos.max()) + 1]
        features = self.model.get_text_features(input_ids, kind="short")[position]
        return dict(zip(kinds, features.split(sizes)))


class FGCLIP2ForTraining(nn.Module):
    """FG-CLIP 2 model + objective (:class:`~fgclip.losses.FGCLIP2Loss`); ``forward`` takes a
    `FineHARDCollator` batch of NaFlex images and exactly padded texts.

    Per step: one vision pass (dense head only when a regional or hard-negative term trains),
    one text-tower call for the long captions and one for the short-path texts of the terms
    that train; short captions then take ``text_model.head``, region captions and
    hard-negative candidates ``boxtext_head``.

    The regional and hard-negative temperatures are trained here, not in the model: the
    released FG-CLIP 2 checkpoints have none, so the saved model keeps their layout. What no
    trained term uses is frozen, so every trainable parameter gets a gradient: a temperature
    whose term does not train, ``boxtext_head`` and ``dense_feature_head`` in stage 1, and
    always the dense head's ``probe`` (the dense path queries with the patches themselves).
    """

    accepts_loss_kwargs = False

    def __init__(self, model: FGCLIP2Model, loss: FGCLIP2Loss, regional: bool = False, hard_negatives: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.regional = regional
        self.hard_negatives = hard_negatives
        self.text_tower_calls = 0
        self.logit_scale_finegraind = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT), requires_grad=regional)
        self.logit_scale_hardneg = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT), requires_grad=hard_negatives)
        needs_regions = regional or hard_negatives
        model.boxtext_head.requires_grad_(needs_regions)
        model.dense_feature_head.requires_grad_(needs_regions)
        model.dense_feature_head.probe.requires_grad_(False)

    @property
    def config(self):
        return self.model.config

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.model.activation_checkpointing_enable(**kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor,
        spatial_shapes: torch.Tensor,
        long_input_ids: torch.Tensor,
        long_attention_mask: torch.Tensor,
        short_input_ids: torch.Tensor,
        short_attention_mask: torch.Tensor,
        short_text_inverse: torch.Tensor,
        short_text_ranges: dict[str, tuple[int, int]],
        boxes: list[torch.Tensor],
        hard_negative_region_index: torch.Tensor,
        region_image_index: torch.Tensor | None = None,
        is_cn: torch.Tensor | None = None,
        skipped_records: list[str] | None = None,
    ) -> dict[str, Any]:
        """Arguments are the keys of a FG-CLIP 2 :class:`~fgclip.data.FineHARDCollator` batch.

        Returns:
            ``{"loss": total (float32 scalar), "terms": {name: detached float32 value}}``.
        """
        model = self.model
        needs_regions = self.regional or self.hard_negatives
        image = model.encode_image(pixel_values, pixel_attention_mask, spatial_shapes, dense=needs_regions)
        long_embeds = model.get_text_features(long_input_ids, kind="long", attention_mask=long_attention_mask)
        kinds = ["short"] + ["region"] * self.regional + ["hard_negative"] * self.hard_negatives
        rows, position, sizes = select_slots(short_text_inverse, short_text_ranges, kinds)
        pooled = model.pooled_text(short_input_ids[rows], short_attention_mask[rows])[position]
        heads = {"short": "short", "region": "region", "hard_negative": "region"}
        texts = {kind: model.text_head(heads[kind])(part) for kind, part in zip(kinds, pooled.split(sizes))}
        self.text_tower_calls += 2

        extra = {}
        if needs_regions:
            regions = model.pool_regions(image.dense_features, spatial_shapes, boxes)
            extra = region_loss_inputs(regions, texts, hard_negative_region_index, self.logit_scale_finegraind,
                                       self.logit_scale_hardneg)
        total, terms = self.loss(image.image_embeds, {"long": long_embeds, "short": texts["short"]},
                                 model.logit_scale.reshape(()), model.logit_bias.reshape(()), **extra)
        return {"loss": total, "terms": terms}
