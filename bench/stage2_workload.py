"""The stage-2 benchmark batch, shared by `bench/train_step.py` and its upstream driver.

ViT-B/16 at 224 px, ``images`` images with ``boxes`` boxes each and ``negatives`` hard
negatives per box; long captions of ``long_tokens`` tokens, every other text (short caption,
region caption, hard-negative positive and negatives) of ``short_tokens`` tokens, every text
distinct. Token counts include bos and eos. Plain tensors only (torch, no fgclip), so the
upstream driver can read the file under upstream's own environment.
"""
from __future__ import annotations

import torch

BOS, EOS = 49406, 49407


def random_texts(count: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
    """(count, tokens) ids: bos, ``tokens - 2`` random BPE ids, eos; distinct rows."""
    body = torch.randint(1, 49400, (count, tokens - 2), generator=generator)
    return torch.cat([torch.full((count, 1), BOS), body, torch.full((count, 1), EOS)], dim=1)


def stage2_batch(images: int = 8, boxes: int = 4, negatives: int = 10, long_tokens: int = 150,
                 short_tokens: int = 20, image_size: int = 224, seed: int = 0) -> dict[str, torch.Tensor]:
    """The workload as plain tensors: ``pixel_values`` (B, 3, S, S); ``long`` (B, long_tokens);
    ``short`` (B, short_tokens); ``region`` (B * boxes, short_tokens); ``hard`` (B * boxes * (1 +
    negatives), short_tokens), each region's positive first; ``boxes`` (B, boxes, 4) xyxy in
    pixels (at least two patches wide)."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(images, boxes, 2, generator=generator) * image_size * 0.6
    size = 32 + torch.rand(images, boxes, 2, generator=generator) * image_size * 0.3
    return {
        "pixel_values": torch.randn(images, 3, image_size, image_size, generator=generator),
        "long": random_texts(images, long_tokens, generator),
        "short": random_texts(images, short_tokens, generator),
        "region": random_texts(images * boxes, short_tokens, generator),
        "hard": random_texts(images * boxes * (1 + negatives), short_tokens, generator),
        "boxes": torch.cat([corner, corner + size], dim=-1),
    }


def collated(batch: dict[str, torch.Tensor]) -> dict:
    """The workload in `fgclip.data.FineHARDCollator`'s layout (texts already unique)."""
    images, boxes = batch["boxes"].shape[:2]
    short_texts = torch.cat([batch["short"], batch["region"], batch["hard"]])
    num_short, num_region = len(batch["short"]), len(batch["region"])
    return {
        "pixel_values": batch["pixel_values"],
        "long_input_ids": batch["long"],
        "short_input_ids": short_texts,
        "short_text_inverse": torch.arange(len(short_texts)),
        "short_text_ranges": {"short": (0, num_short), "region": (num_short, num_short + num_region),
                              "hard_negative": (num_short + num_region, len(short_texts))},
        "boxes": list(batch["boxes"].float()),
        "region_image_index": torch.arange(images).repeat_interleave(boxes),
        "hard_negative_region_index": torch.arange(images * boxes),
    }


def text_tokens(batch: dict[str, torch.Tensor], padded: dict[str, int] | None = None) -> dict[str, int]:
    """Tokens per text kind as encoded: real lengths, or ``padded`` widths per kind (upstream: 248 / 77)."""
    return {kind: len(batch[kind]) * (padded[kind] if padded else batch[kind].shape[1])
            for kind in ("long", "short", "region", "hard")}
