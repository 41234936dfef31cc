"""What both model families' modeling files share: text kinds and processor-batch keys with their
checks, box and layer checks, the long position table (its interpolation and the embedding mixin),
RoI pooling of dense maps and the output classes. Each ``modeling_*`` file holds one family and
imports the shared pieces from here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align
from transformers.utils import ModelOutput

TEXT_KINDS = ("short", "long", "region")
# Keys of a processor batch (see FGCLIPProcessor.__call__): each modality's methods accept and
# ignore the other's, so ``get_image_features(**batch)`` and ``get_text_features(**batch)`` both work.
IMAGE_BATCH_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes", "boxes", "image_sizes")
TEXT_BATCH_KEYS = ("input_ids", "attention_mask", "text_kind")


def check_text_kind(text_kind: str) -> str:
    if text_kind not in TEXT_KINDS:
        raise ValueError(f"unknown text kind {text_kind!r}; expected one of {', '.join(TEXT_KINDS)}")
    return text_kind


def check_attention_mask(attention_mask) -> None:
    """``attention_mask`` must be a tensor or ``None``: FG-CLIP ignores it, so a text kind passed there
    (the argument order before 0.2.0) would otherwise embed the texts as short ones without a word."""
    if not (attention_mask is None or isinstance(attention_mask, torch.Tensor)):
        raise TypeError(f"attention_mask must be a tensor or None, got {type(attention_mask).__name__}; "
                        "pass the text kind as text_kind=...")


def ignore_batch_keys(extra: dict, allowed: Sequence[str], method: str) -> None:
    """Accept the other modality's processor-batch keys; anything else is a caller's typo."""
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s) {', '.join(unknown)}")


def check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """Zero-based block indices (negative ones count from the end), each in range."""
    resolved = []
    for index in layers:
        position = index + num_layers if index < 0 else index
        if not 0 <= position < num_layers:
            raise ValueError(f"layer {index} is out of range for a {num_layers}-block vision tower")
        resolved.append(position)
    return resolved


def interpolate_long_positions(short_table: torch.Tensor, keep: int, stretch: int) -> torch.Tensor:
    """Stretch a CLIP position table into FG-CLIP's long table.

    Rows ``0..keep-1`` are copied; each later pair ``(p[i], p[i+1])`` becomes ``stretch`` rows
    ``p[i] * (1 - j/stretch) + p[i+1] * j/stretch``; the last ``stretch`` rows extrapolate
    ``p[-1] + j * (p[-1] - p[-2]) / stretch``.

    Args:
        short_table: (L, C) position embeddings, L = 77 for CLIP.
    Returns:
        (keep + stretch * (L - keep), C), 248 rows for CLIP with keep 20 and stretch 4.
    """
    steps = torch.arange(stretch, dtype=short_table.dtype, device=short_table.device) / stretch
    left, right = short_table[keep:-1], short_table[keep + 1:]
    middle = left[:, None] * (1 - steps)[None, :, None] + right[:, None] * steps[None, :, None]
    slope = short_table[-1] - short_table[-2]
    tail = short_table[-1][None] + steps[:, None] * slope[None]
    return torch.cat([short_table[:keep], middle.flatten(0, 1), tail])


@torch.no_grad()
def start_long_positions(embeddings, keep: int, stretch: int) -> None:
    """Start both long position tables of text ``embeddings`` (``position_embedding_ori`` and
    ``position_embedding_res``) from its short table stretched by :func:`interpolate_long_positions`,
    as both papers initialise the long-text path from the plain dual encoder."""
    long_table = interpolate_long_positions(embeddings.position_embedding.weight, keep, stretch)
    embeddings.position_embedding_ori.weight.copy_(long_table)
    embeddings.position_embedding_res.weight.copy_(long_table)


class LongPositionEmbeddings:
    """Mixin for a text-embedding module (token + position tables): a second, long position table.

    Position ids ``0..short-1`` index the short table; ids ``short..short+long-1`` index the
    long table, so one module serves both paths and the choice travels with the
    ``position_ids`` the model passes. The long table is stored as upstream stores it: rows
    ``0..keep-1`` of ``position_embedding_ori`` and rows ``keep..`` of ``position_embedding_res``.
    """

    def __init__(self, config, long_length: int, keep_positions: int):
        super().__init__(config)
        self.keep_positions = keep_positions
        self.position_embedding_ori = nn.Embedding(long_length, config.hidden_size)
        self.position_embedding_res = nn.Embedding(long_length, config.hidden_size)

    def long_position_table(self) -> torch.Tensor:
        """(long_length, C): rows ``0..keep-1`` of ``_ori`` then rows ``keep..`` of ``_res``."""
        keep = self.keep_positions
        return torch.cat([self.position_embedding_ori.weight[:keep], self.position_embedding_res.weight[keep:]])

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None) -> torch.Tensor:
        seq_length = input_ids.shape[-1] if input_ids is not None else inputs_embeds.shape[-2]
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_length]
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        table = torch.cat([self.position_embedding.weight, self.long_position_table()])
        return inputs_embeds + F.embedding(position_ids, table)


@dataclass
class FGCLIPImageOutput(ModelOutput):
    """Outputs of one vision-tower pass (both model families).

    Args:
        image_embeds: (B, D) projected global embeddings, unnormalised.
        dense_features: projected patch embeddings, unnormalised: (B, h, w, D) for FG-CLIP,
            (B, N, D) padded NaFlex rows for FG-CLIP 2 (``model.dense_maps`` gives per-image maps).
        spatial_shapes: (B, 2) patch grid ``(h, w)`` of each image.
        region_embeds: (sum K_i, D) RoIAlign features of the boxes, unnormalised, image 0's first.
    Fields that were not requested are ``None``.
    """

    image_embeds: torch.Tensor | None = None
    dense_features: torch.Tensor | None = None
    spatial_shapes: torch.Tensor | None = None
    region_embeds: torch.Tensor | None = None

    def normalized(self) -> "FGCLIPImageOutput":
        """The same output with every feature L2-normalised."""
        def unit(features):
            return None if features is None else F.normalize(features, dim=-1)

        return FGCLIPImageOutput(unit(self.image_embeds), unit(self.dense_features), self.spatial_shapes,
                                 unit(self.region_embeds))


@dataclass
class TokenFeatures(ModelOutput):
    """Per-token states of one tower, for a cross-encoder re-ranker.

    Args:
        tokens: (N, L, C) hidden states of the tower's last layer (after its final norm).
        mask: (N, L) 1 on real tokens.
        embeds: (N, D) the dual encoder's global embeddings of the same inputs, unnormalised.
    """

    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    embeds: torch.Tensor | None = None


@dataclass
class FGCLIPOutput(ModelOutput):
    """Image-text logits of :meth:`FGCLIPModel.forward` and :meth:`FGCLIP2Model.forward` (embeddings L2-normalised)."""

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


def roi_pool(dense_features: torch.Tensor, boxes: list[torch.Tensor], patch_size: int) -> torch.Tensor:
    """RoIAlign (1x1, aligned, adaptive sampling, float32) of a (B, h, w, D) patch map.

    ``boxes``: one (K_i, 4) xyxy tensor per image in input pixels, already checked.
    Returns (sum K_i, D) in the map's dtype, image 0's boxes first.
    """
    feature_map = dense_features.permute(0, 3, 1, 2).float()
    regions = roi_align(
        feature_map,
        [b.to(feature_map) for b in boxes],
        output_size=1,
        spatial_scale=1.0 / patch_size,
        sampling_ratio=-1,
        aligned=True,
    )[:, :, 0, 0]
    return regions.to(dense_features.dtype)


def check_boxes(boxes: list[torch.Tensor], num_images: int, height: int, width: int) -> list[torch.Tensor]:
    """Validate per-image xyxy boxes against an image of ``height`` x ``width`` pixels.

    Raises ``ValueError`` naming the image and box index for a wrong count or shape, a
    non-finite coordinate, a zero- or negative-area box, or a box outside the image.
    """
    if isinstance(boxes, torch.Tensor) or len(boxes) != num_images:
        raise ValueError(f"boxes must be a list with one (K, 4) tensor per image ({num_images} images)")
    checked = []
    for image_index, image_boxes in enumerate(boxes):
        image_boxes = torch.as_tensor(image_boxes, dtype=torch.float32)
        if image_boxes.ndim != 2 or image_boxes.shape[-1] != 4:
            raise ValueError(f"image {image_index}: boxes must have shape (K, 4), got {tuple(image_boxes.shape)}")
        for box_index, (x1, y1, x2, y2) in enumerate(image_boxes.tolist()):
            where = f"image {image_index} box {box_index} {[x1, y1, x2, y2]}"
            if not all(map(math.isfinite, (x1, y1, x2, y2))):
                raise ValueError(f"{where}: coordinates must be finite numbers")
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"{where}: zero or negative area (need x2 > x1 and y2 > y1)")
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise ValueError(f"{where}: outside the {width}x{height} image")
        checked.append(image_boxes)
    return checked
