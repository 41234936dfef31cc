"""One FG-CLIP training step as an ``nn.Module``, so DDP / DeepSpeed wrap the whole step.

The wrapper holds the model and the loss: the loss's state (e.g. FG-CLIP 2's rank-loss
threshold) is then part of every checkpoint and is restored on resume.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..losses import FGCLIPLoss
from ..modeling_fgclip import FGCLIPModel


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
        skipped_records: list[str] | None = None,
    ) -> dict[str, Any]:
        """Arguments are the keys of a :class:`~fgclip.data.FineHARDCollator` batch (its layout
        is in `fgclip.data.collate`); ``region_image_index`` and ``skipped_records`` are
        bookkeeping that the step does not need (``boxes`` already group the regions by image).

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

        # Temperatures as 0-dim tensors: under DeepSpeed the trainer holds them as (1,) parameters.
        extra: dict[str, torch.Tensor] = {}
        if needs_regions:
            regions = model.pool_regions(image.dense_features, boxes)
        if self.regional:
            extra.update(region_embeds=regions, region_text_embeds=texts["region"],
                         logit_scale_finegraind=model.logit_scale_finegraind.reshape(()))
        if self.hard_negatives:
            groups = hard_negative_region_index.shape[0]
            candidates = texts["hard_negative"]
            width = candidates.shape[0] // groups if groups else 1
            extra.update(hard_region_embeds=regions[hard_negative_region_index],
                         hard_candidate_embeds=candidates.reshape(groups, width, candidates.shape[-1]),
                         logit_scale_hardneg=model.logit_scale_hardneg.reshape(()))
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
        slots = [short_text_inverse[slice(*short_text_ranges[kind])] for kind in kinds]
        rows, position = torch.unique(torch.cat(slots), return_inverse=True)
        input_ids = short_input_ids[rows]
        if rows.numel() < short_input_ids.shape[0]:
            first_eos = (input_ids == self.model.config.text_config.eos_token_id).int().argmax(dim=1)
            input_ids = input_ids[:, : int(first_eos.max()) + 1]
        features = self.model.get_text_features(input_ids, kind="short")[position]
        return dict(zip(kinds, features.split([len(slot) for slot in slots])))
