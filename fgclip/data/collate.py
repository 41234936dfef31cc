"""Batching of FineHARD samples (see `fgclip.data.datasets`) with one tokenizer call per
text length.

The texts of a batch go to the text tower in two calls only:

- the B long captions, ``processor(text=long_texts, text_kind="long", padding=long_padding)``;
- the B short captions, the R region captions and the H x (1 + N) hard-negative texts
  together, de-duplicated, ``processor(text=unique_texts, text_kind="short", padding=short_padding)``.

Nothing is padded at the batch level: images without boxes add no region, regions
without negatives add no group, so no dummy box or dummy text is ever encoded.

Batch (a plain dict, so HF Trainer / accelerate move its tensors to the device)::

    pixel_values                (B, 3, S, S); for FG-CLIP 2 (B, N, 3 * p * p) patches, with
                                ``pixel_attention_mask`` (B, N) and ``spatial_shapes`` (B, 2)
    long_input_ids              (B, L_long)
    short_input_ids             (T, L_short)   T unique short-path texts
    long_attention_mask,        (B, L_long) / (T, L_short)
    short_attention_mask
    short_text_inverse          (B + R + H * (1 + N),) row of short_input_ids for each text slot
    short_text_ranges           {"short": (0, B), "region": (B, B + R),
                                 "hard_negative": (B + R, B + R + H * (1 + N))} slot ranges
    boxes                       :class:`Boxes`: B (K_i, 4) float32 tensors, xyxy in input pixels,
                                sum K_i = R
    region_image_index          (R,) image of each region
    hard_negative_region_index  (H,) region (index into the R regions) of each group
    is_cn                       (B,) bool, each record's language (bookkeeping)
    skipped_records             reasons of bad shard samples skipped before this batch

The trainer encodes ``short_input_ids`` once, expands with
``features[short_text_inverse]``, and slices the ranges; the hard-negative slice
reshapes to (H, 1 + N, D) with the positive at index 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..processing_common import concat_image_batches
from .datasets import IMAGE_KEYS


class Boxes(Sequence):
    """The per-image (K_i, 4) float32 box tensors of a batch, as a read-only sequence that is neither a
    list nor a tensor: HF Trainer's input preparation (which under DeepSpeed casts every float
    tensor it reaches to bf16, rounding box coordinates) passes it through untouched; the training
    step moves the boxes to its device."""

    def __init__(self, boxes):
        self._boxes = list(boxes)

    def __getitem__(self, index):
        return self._boxes[index]

    def __len__(self) -> int:
        return len(self._boxes)


def length_buckets(widths: list[int], overhead_tokens: int) -> list[tuple[int, int]]:
    """Cut texts sorted by width into contiguous buckets, each padded to its widest text, at the least
    cost ``sum(rows * width) + overhead_tokens * buckets`` (exact, over the distinct widths).

    Args:
        widths: each text's tokens, ascending.
        overhead_tokens: the fixed cost of one more text-tower call, in tokens.
    Returns:
        ``(start, end)`` row ranges covering ``0..len(widths)``.
    """
    ends = [end for end in range(1, len(widths) + 1) if end == len(widths) or widths[end] != widths[end - 1]]
    best = [(0.0, -1)]  # best[j]: (cost of rows before ends[j - 1], previous cut)
    for j, end in enumerate(ends):
        candidates = []
        for i in range(j + 1):
            start = ends[i - 1] if i else 0
            candidates.append((best[i][0] + (end - start) * widths[end - 1] + overhead_tokens, i))
        best.append(min(candidates))
    bounds, j = [], len(ends)
    while j:
        i = best[j][1]
        bounds.append((ends[i - 1] if i else 0, ends[j - 1]))
        j = i
    return bounds[::-1]


def deduplicate(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Unique texts in first-seen order and the inverse index: ``unique[inverse[i]] == texts[i]``."""
    positions: dict[str, int] = {}
    inverse = [positions.setdefault(text, len(positions)) for text in texts]
    return list(positions), torch.tensor(inverse, dtype=torch.long)


class FineHARDCollator:
    """Collate FineHARD samples into one training batch (layout in the module docstring).

    Args:
        processor: the model's processor; texts are tokenized with ``processor(text=...,
            text_kind=..., padding=...)``, which returns ``input_ids`` and ``attention_mask``.
        long_padding / short_padding: default ``processor.minimal_padding``, the shortest
            padding with the same features (``"longest"`` under CLIP's causal mask and first-eos
            pooling; ``"max_length"`` for FG-CLIP 2, which pools the last position).
    """

    def __init__(self, processor, long_padding: str | None = None, short_padding: str | None = None):
        self.processor = processor
        self.long_padding = long_padding or processor.minimal_padding
        self.short_padding = short_padding or processor.minimal_padding

    def _tokenize(self, texts: list[str], kind: str, padding: str) -> dict[str, torch.Tensor]:
        encoded = self.processor(text=texts, text_kind=kind, padding=padding)
        return {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        short_texts = [sample["short_text"] for sample in samples]
        region_texts: list[str] = []
        region_image_index: list[int] = []
        hard_texts: list[str] = []
        hard_region_index: list[int] = []
        for image_index, sample in enumerate(samples):
            first_region = len(region_texts)
            region_texts.extend(sample["region_texts"])
            region_image_index.extend([image_index] * len(sample["region_texts"]))
            for region, group in zip(sample["hard_negative_regions"], sample["hard_negative_texts"]):
                hard_texts.extend(group)
                hard_region_index.append(first_region + region)
        unique_texts, inverse = deduplicate(short_texts + region_texts + hard_texts)
        num_short, num_region = len(short_texts), len(region_texts)
        texts = {
            "long": self._tokenize([sample["long_text"] for sample in samples], "long", self.long_padding),
            "short": self._tokenize(unique_texts, "short", self.short_padding),
        }
        image_inputs = concat_image_batches([{key: sample[key][None] for key in IMAGE_KEYS if key in sample}
                                             for sample in samples])
        return {
            **image_inputs,
            **{f"{kind}_{key}": value for kind, encoded in texts.items() for key, value in encoded.items()},
            "short_text_inverse": inverse,
            "short_text_ranges": {
                "short": (0, num_short),
                "region": (num_short, num_short + num_region),
                "hard_negative": (num_short + num_region, len(inverse)),
            },
            "boxes": Boxes(sample["boxes"] for sample in samples),
            "region_image_index": torch.tensor(region_image_index, dtype=torch.long),
            "hard_negative_region_index": torch.tensor(hard_region_index, dtype=torch.long),
            "is_cn": torch.tensor([sample.get("is_cn", False) for sample in samples]),
            "skipped_records": [reason for sample in samples for reason in sample.get("skipped_records", ())],
        }
