"""One training step (any model family) as an ``nn.Module``, so DDP / DeepSpeed wrap the whole step.

The wrapper holds the model and the loss: the loss's state (e.g. FG-CLIP 2's rank-loss
threshold) is then part of every checkpoint and is restored on resume.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.collate import length_buckets


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
    """Model + objective of either family; ``forward`` takes a `FineHARDCollator` batch.

    Per step: one vision pass (with dense features only when a regional or hard-negative term
    trains), one text-tower call for the long captions and one for the short-path texts of the
    terms that train (short captions, plus region captions and hard-negative candidates in stage
    2), de-duplicated and cut to the model's shortest equivalent padding; each kind then takes
    its projection (FG-CLIP: ``text_projection``; FG-CLIP 2: ``text_model.head`` for short
    captions, ``boxtext_head`` for region texts).

    What no trained term uses is frozen (``model.set_trainable_terms``), so every trainable
    parameter gets a gradient at every step (DDP needs no search for unused parameters).

    Args:
        model: the model being trained (any family of :mod:`fgclip.encoders`).
        loss: the family's objective (:class:`FGCLIPLoss` / :class:`FGCLIP2Loss`).
        regional / hard_negatives: whether the regional and hard-negative terms train.
    """

    # The loss is a per-batch mean: HF Trainer must not pass `num_items_in_batch` to forward.
    accepts_loss_kwargs = False
    # Fixed cost of one more short-path text-tower call when bucketing texts by length, in tokens of
    # a ViT-B/16-sized text tower (width 512, 12 layers; scaled by the tower's width^2 x depth), by
    # device type (CPU: a pass of small ops over every layer, and the first product of each new
    # shape, 1-5 ms per product shape in bf16; GPU: kernel launches dominate short texts).
    bucket_overhead_tokens = {"cpu": 256, "cuda": 4096}

    def __init__(self, model: nn.Module, loss: nn.Module, regional: bool = False, hard_negatives: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.regional = regional
        self.hard_negatives = hard_negatives
        self.text_tower_calls = 0
        model.set_trainable_terms(regional, hard_negatives)

    @property
    def config(self):
        """The model's configuration (HF Trainer reads it, e.g. for DeepSpeed's ``auto`` bucket sizes)."""
        return self.model.config

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.model.activation_checkpointing_enable(**kwargs)

    def forward(
        self,
        long_input_ids: torch.Tensor,
        short_input_ids: torch.Tensor,
        short_text_inverse: torch.Tensor,
        short_text_ranges: dict[str, tuple[int, int]],
        boxes: list[torch.Tensor],
        hard_negative_region_index: torch.Tensor,
        long_attention_mask: torch.Tensor | None = None,
        short_attention_mask: torch.Tensor | None = None,
        region_image_index: torch.Tensor | None = None,
        is_cn: torch.Tensor | None = None,
        skipped_records: list[str] | None = None,
        **image_inputs,
    ) -> dict[str, Any]:
        """Arguments are the keys of a :class:`~fgclip.data.FineHARDCollator` batch (its layout is in
        `fgclip.data.collate`); ``image_inputs`` are the model's image keys (``pixel_values``, and
        FG-CLIP 2's mask and shapes). ``region_image_index``, ``is_cn`` and ``skipped_records`` are
        bookkeeping that the step does not need (``boxes`` already group the regions by image).

        Returns:
            ``{"loss": total (float32 scalar), "terms": {name: detached float32 value}}``.
        """
        model = self.model
        needs_regions = self.regional or self.hard_negatives
        device = image_inputs["pixel_values"].device
        boxes = [box.to(device=device, dtype=torch.float32) for box in boxes] if needs_regions else None
        image = model.encode_image(**image_inputs, dense=False, boxes=boxes)
        long_embeds = model.get_text_features(long_input_ids, long_attention_mask, "long")
        kinds = ["short"] + ["region"] * self.regional + ["hard_negative"] * self.hard_negatives
        texts = self.encode_short_path(short_input_ids, short_attention_mask, short_text_inverse, short_text_ranges,
                                       kinds)
        self.text_tower_calls += 2  # the long path and the short path (one however many length buckets)

        extra = {}
        if needs_regions:
            extra = region_loss_inputs(image.region_embeds, texts, hard_negative_region_index,
                                       model.logit_scale_finegraind, model.logit_scale_hardneg)
        total, terms = self.loss(image.image_embeds, {"long": long_embeds, "short": texts["short"]},
                                 **model.global_logit_parameters(), **extra)
        return {"loss": total, "terms": terms}

    def encode_short_path(
        self,
        short_input_ids: torch.Tensor,
        short_attention_mask: torch.Tensor | None,
        short_text_inverse: torch.Tensor,
        short_text_ranges: dict[str, tuple[int, int]],
        kinds: list[str],
    ) -> dict[str, torch.Tensor]:
        """Embed the short-path texts of ``kinds``, bucketed by length.

        Only the unique rows that the slots of ``kinds`` refer to are encoded (stage 1 leaves
        the batch's region and negative texts out). Where the model pools a position that
        padding does not reach (``model.trim_padding`` shortens a text to its own tokens, as
        FG-CLIP's first-eos pooling under the causal mask does), the texts are sorted by length
        (``short_attention_mask``) and cut into the buckets of :func:`length_buckets`, each
        padded only to its own longest text; otherwise they go in one call. Hard-negative
        candidates take the region head.

        Returns:
            ``{kind: (slots of kind, D)}`` in slot order.
        """
        model = self.model
        rows, position, sizes = select_slots(short_text_inverse, short_text_ranges, kinds)
        input_ids = short_input_ids[rows]
        mask = None if short_attention_mask is None else short_attention_mask[rows]
        pooled = self._pooled_by_length(input_ids, mask)[position]
        heads = {"short": "short", "region": "region", "hard_negative": "region"}
        return {kind: model.project_text(part, heads[kind]) for kind, part in zip(kinds, pooled.split(sizes))}

    def bucket_overhead(self, device_type: str) -> float:
        """The cost of one more text-tower call on ``device_type``, in this model's text tokens
        (:attr:`bucket_overhead_tokens` scaled from a ViT-B/16-sized tower; a device type it does not
        list is taken as a GPU)."""
        text = self.model.config.text_config
        scale = 12 * 512**2 / (text.num_hidden_layers * text.hidden_size**2)
        return scale * self.bucket_overhead_tokens.get(device_type, max(self.bucket_overhead_tokens.values()))

    def _pooled_by_length(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(T, C) pooled states of the rows of ``input_ids``, in row order, from length buckets."""
        model = self.model
        if mask is not None:
            widths, order = torch.sort(mask.sum(dim=1), stable=True)
        if mask is None or model.trim_padding(input_ids[order[:1]])[0].shape[1] == input_ids.shape[1]:
            return model.pooled_text(*model.trim_padding(input_ids, mask))
        overhead = self.bucket_overhead(input_ids.device.type)
        pieces = [model.pooled_text(*model.trim_padding(input_ids[order[start:end]], mask[order[start:end]]))
                  for start, end in length_buckets(widths.tolist(), overhead)]
        return torch.cat(pieces)[torch.argsort(order)]
