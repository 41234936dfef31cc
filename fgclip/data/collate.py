"""Batching of FineHARD samples (see `fgclip.data.datasets`) with one tokenizer call per
text length.

The texts of a batch go to the text tower in two calls only:

- the B long captions, ``tokenize(long_texts, kind="long", padding=long_padding)``;
- the B short captions, the R region captions and the H x (1 + N) hard-negative texts
  together, de-duplicated, ``tokenize(unique_texts, kind="short", padding="longest")``.

Nothing is padded at the batch level: images without boxes add no region, regions
without negatives add no group, so no dummy box or dummy text is ever encoded.

Batch (a plain dict, so HF Trainer / accelerate move its tensors to the device)::

    pixel_values                (B, 3, S, S); for FG-CLIP 2 (samples holding `FGCLIP2Images`)
                                (B, N, 3 * p * p) patches, with ``pixel_attention_mask`` (B, N)
                                and ``spatial_shapes`` (B, 2) beside it
    long_input_ids              (B, L_long)
    short_input_ids             (T, L_short)   T unique short-path texts
    long_attention_mask,        (B, L_long) / (T, L_short), only when ``tokenize`` returns
    short_attention_mask        ``{"input_ids", "attention_mask"}`` (FG-CLIP 2)
    short_text_inverse          (B + R + H * (1 + N),) row of short_input_ids for each text slot
    short_text_ranges           {"short": (0, B), "region": (B, B + R),
                                 "hard_negative": (B + R, B + R + H * (1 + N))} slot ranges
    boxes                       list of B (K_i, 4) tensors, xyxy in input pixels, sum K_i = R
    region_image_index          (R,) image of each region
    hard_negative_region_index  (H,) region (index into the R regions) of each group
    is_cn                       (B,) bool, each record's language (bookkeeping)
    skipped_records             reasons of bad shard samples skipped before this batch

The trainer encodes ``short_input_ids`` once, expands with
``features[short_text_inverse]``, and slices the ranges; the hard-negative slice
reshapes to (H, 1 + N, D) with the positive at index 0.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

Tokenize = Callable[..., torch.Tensor]


def deduplicate(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Unique texts in first-seen order and the inverse index: ``unique[inverse[i]] == texts[i]``."""
    positions: dict[str, int] = {}
    inverse = [positions.setdefault(text, len(positions)) for text in texts]
    return list(positions), torch.tensor(inverse, dtype=torch.long)


class FineHARDCollator:
    """Collate FineHARD samples into one training batch (layout in the module docstring).

    Args:
        tokenize: ``tokenize(texts, kind=..., padding=...)`` returning a LongTensor (N, L)
            (e.g. `FGCLIPProcessor.tokenize`) or ``{"input_ids", "attention_mask"}`` (e.g.
            `FGCLIP2Processor.tokenize`).
        long_padding / short_padding: ``"longest"`` (default) gives the same features as
            ``"max_length"`` under CLIP's causal mask and first-eos pooling; FG-CLIP 2, which
            pools the last position, needs ``"max_length"`` for both.
    """

    def __init__(self, tokenize: Tokenize, long_padding: str = "longest", short_padding: str = "longest"):
        self.tokenize = tokenize
        self.long_padding = long_padding
        self.short_padding = short_padding

    def _tokenize(self, texts: list[str], kind: str, padding: str) -> dict[str, torch.Tensor]:
        encoded = self.tokenize(texts, kind=kind, padding=padding)
        if isinstance(encoded, torch.Tensor):
            return {"input_ids": encoded}
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

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
        images = [sample["pixel_values"] for sample in samples]
        texts = {
            "long": self._tokenize([sample["long_text"] for sample in samples], "long", self.long_padding),
            "short": self._tokenize(unique_texts, "short", self.short_padding),
        }
        if isinstance(images[0], torch.Tensor):
            image_inputs = {"pixel_values": torch.stack(images)}
        else:
            image_inputs = type(images[0]).cat(images).as_kwargs()
        return {
            **image_inputs,
            **{f"{kind}_{key}": value for kind, encoded in texts.items() for key, value in encoded.items()},
            "short_text_inverse": inverse,
            "short_text_ranges": {
                "short": (0, num_short),
                "region": (num_short, num_short + num_region),
                "hard_negative": (num_short + num_region, len(inverse)),
            },
            "boxes": [sample["boxes"] for sample in samples],
            "region_image_index": torch.tensor(region_image_index, dtype=torch.long),
            "hard_negative_region_index": torch.tensor(hard_region_index, dtype=torch.long),
            "is_cn": torch.tensor([sample.get("is_cn", False) for sample in samples]),
            "skipped_records": [reason for sample in samples for reason in sample.get("skipped_records", ())],
        }
