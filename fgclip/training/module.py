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
    term trains), one text-tower call for the long captions and one for every short-path
    text (short captions, region captions and hard-negative candidates, de-duplicated).

    Args:
        model: the FG-CLIP model being trained.
        loss: the objective (:class:`FGCLIPLoss`).
        regional / hard_negatives: whether the regional and hard-negative terms train.
    """

    def __init__(self, model: FGCLIPModel, loss: FGCLIPLoss, regional: bool = False, hard_negatives: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.regional = regional
        self.hard_negatives = hard_negatives
        self.text_tower_calls = 0

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
        **unused: Any,
    ) -> dict[str, Any]:
        """Returns ``{"loss": total, "terms": {name: detached value}}``."""
        model = self.model
        needs_regions = self.regional or self.hard_negatives
        image = model.encode_image(pixel_values, dense=needs_regions)
        long_embeds = model.get_text_features(long_input_ids, kind="long")
        short_path = model.get_text_features(short_input_ids, kind="short")[short_text_inverse]
        self.text_tower_calls += 2

        def texts(kind: str) -> torch.Tensor:
            start, stop = short_text_ranges[kind]
            return short_path[start:stop]

        extra: dict[str, torch.Tensor] = {}
        if needs_regions:
            regions = model.pool_regions(image.dense_features, boxes)
        if self.regional:
            extra.update(region_embeds=regions, region_text_embeds=texts("region"),
                         logit_scale_finegraind=model.logit_scale_finegraind)
        if self.hard_negatives:
            groups = hard_negative_region_index.shape[0]
            candidates = texts("hard_negative")
            width = candidates.shape[0] // groups if groups else 1
            extra.update(hard_region_embeds=regions[hard_negative_region_index],
                         hard_candidate_embeds=candidates.reshape(groups, width, candidates.shape[-1]),
                         logit_scale_hardneg=model.logit_scale_hardneg)
        total, terms = self.loss(
            image.image_embeds, {"long": long_embeds, "short": texts("short")}, model.logit_scale, **extra
        )
        return {"loss": total, "terms": terms}
