"""Pre-processing for FG-CLIP 2: lower-cased multilingual tokenisation and NaFlex images with boxes.

Texts are lower-cased (as FG-CLIP 2 was trained) and padded to exactly 64 tokens (short and
region texts) or 196 (long texts), because SigLIP pools the last position. Images go through
transformers' ``Siglip2ImageProcessor``: resized with their aspect ratio kept to at most
``max_num_patches`` patches of 16 pixels (a fixed budget, or FG-CLIP 2's size-dependent
inference rule), cut into patches and padded to the largest budget of the batch;
boxes in original pixels are mapped to input pixels of each image's own patch grid.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import AutoTokenizer, Siglip2ImageProcessor

from .configuration_fgclip2 import FGCLIP2Config
from .processing_fgclip import DualEncoderProcessor, concat_image_batches, load_image, warn_truncated


@dataclass
class FGCLIP2Images:
    """Deprecated: the NaFlex image batch that ``FGCLIP2Processor.preprocess`` returned. The processor
    call returns a ``BatchFeature`` with the same three keys, which the model takes as ``**batch``."""

    pixel_values: torch.Tensor
    pixel_attention_mask: torch.Tensor
    spatial_shapes: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "FGCLIP2Images":
        return FGCLIP2Images(*(tensor.to(device, non_blocking=non_blocking) for tensor in
                               (self.pixel_values, self.pixel_attention_mask, self.spatial_shapes)))

    @classmethod
    def cat(cls, batches: list["FGCLIP2Images"]) -> "FGCLIP2Images":
        return cls(**concat_image_batches([batch.as_kwargs() for batch in batches]))

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values, "pixel_attention_mask": self.pixel_attention_mask,
                "spatial_shapes": self.spatial_shapes}


def auto_patch_budget(image: Image.Image, patch_size: int = 16) -> int:
    """FG-CLIP 2's inference patch budget: the smallest of 128 / 256 / 576 / 784 / 1024 patches
    that holds the image's native ``(w // p) * (h // p)`` patches (1024 at most)."""
    native = (image.width // patch_size) * (image.height // patch_size)
    return next((budget for budget in (128, 256, 576, 784) if native <= budget), 1024)


class FGCLIP2Processor(DualEncoderProcessor):
    """Tokenizer + NaFlex image processor of an FG-CLIP 2 model.

    Args:
        tokenizer: the checkpoint's tokenizer (Gemma's multilingual vocabulary for the
            released models), e.g. ``AutoTokenizer.from_pretrained("qihoo360/fg-clip2-base")``.
        image_processor: a ``Siglip2ImageProcessor``; built with ``patch_size`` if omitted.
        short_length / long_length: token lengths of short (and region) and long texts.
        max_num_patches: patch budget per image (default: the image processor's), or
            ``"auto"``: FG-CLIP 2's inference rule, which grows the budget with the image
            (:func:`auto_patch_budget`); images of one call are then padded to the largest
            budget among them.
    """

    def __init__(
        self,
        tokenizer,
        image_processor: Siglip2ImageProcessor | None = None,
        short_length: int = 64,
        long_length: int = 196,
        patch_size: int = 16,
        max_num_patches: int | str | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor or Siglip2ImageProcessor(patch_size=patch_size)
        if max_num_patches is None:
            max_num_patches = self.image_processor.max_num_patches
        if max_num_patches != "auto" and not (isinstance(max_num_patches, int) and max_num_patches > 0):
            raise ValueError(f"max_num_patches must be a positive integer or 'auto', got {max_num_patches!r}")
        if max_num_patches != "auto":
            self.image_processor.max_num_patches = max_num_patches  # saved with the image processor
        self.max_num_patches = max_num_patches
        self.short_length = short_length
        self.long_length = long_length

    @classmethod
    def for_config(cls, config: FGCLIP2Config, tokenizer=None, **kwargs) -> "FGCLIP2Processor":
        """A processor matching a model configuration (text lengths, patch size, position grid)."""
        if tokenizer is None:
            raise ValueError("an FG-CLIP 2 processor needs the checkpoint's tokenizer (Gemma's multilingual one for "
                             "the released models)")
        vision = config.vision_config
        kwargs.setdefault("max_num_patches", vision.num_patches)
        return cls(tokenizer, short_length=config.short_text_length, long_length=config.long_text_length,
                   patch_size=vision.patch_size, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, max_num_patches: int | str | None = "auto", **kwargs
    ) -> "FGCLIP2Processor":
        """Tokenizer, image processor and text lengths of a checkpoint directory or hub id. The patch
        budget is FG-CLIP 2's inference rule by default; ``None`` keeps the saved image processor's."""
        config = FGCLIP2Config.from_pretrained(path, **kwargs)
        return cls(
            AutoTokenizer.from_pretrained(path, **kwargs),
            Siglip2ImageProcessor.from_pretrained(path, **kwargs),
            short_length=config.short_text_length,
            long_length=config.long_text_length,
            max_num_patches=max_num_patches,
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)

    def patch_budget(self, image: Image.Image, max_num_patches: int | str | None = None) -> int:
        """The patch budget of ``image`` (the processor's, or ``max_num_patches`` for this call)."""
        budget = self.max_num_patches if max_num_patches is None else max_num_patches
        return auto_patch_budget(image, self.image_processor.patch_size) if budget == "auto" else budget

    # ------------------------------------------------------------------ text
    def _encode_text(self, texts: list[str], text_kind: str, padding: str) -> dict[str, torch.Tensor]:
        """Lower-cased ``texts`` as ``input_ids`` / ``attention_mask``, (N, 64) or (N, 196) for long.

        Over-long texts are cut with a warning that counts them. ``padding`` must be
        ``"max_length"``: SigLIP pools the last position, so the length is part of the feature.
        """
        if padding != "max_length":
            raise ValueError(f"FG-CLIP 2 texts are padded to their exact length (padding='max_length'), got {padding!r}")
        texts = [text.lower() for text in texts]
        max_length = self.max_length(text_kind)
        warn_truncated(self.tokenizer, texts, max_length, text_kind)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                                 return_tensors="pt", return_attention_mask=True)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # ------------------------------------------------------------------ images
    def _encode_images(self, images: list, boxes, max_num_patches: int | str | None = None) -> dict:
        """NaFlex ``pixel_values`` / ``pixel_attention_mask`` / ``spatial_shapes``, each image resized to
        its patch budget and padded to the largest of the call; ``boxes`` mapped to input pixels of
        each image's own grid (``0..w_i * p`` by ``0..h_i * p``)."""
        images = [load_image(image) for image in images]
        budgets = [self.patch_budget(image, max_num_patches) for image in images]
        parts = {}
        for budget in dict.fromkeys(budgets):  # one processor call per budget, then back in order
            members = [index for index, b in enumerate(budgets) if b == budget]
            encoded = self.image_processor([images[i] for i in members], return_tensors="pt", max_num_patches=budget)
            for row, index in enumerate(members):
                parts[index] = {key: encoded[key][row : row + 1]
                                for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
        data = dict(concat_image_batches([parts[index] for index in range(len(images))]))
        if boxes is not None:
            patch = self.image_processor.patch_size
            data["boxes"] = []
            for image, image_boxes, (grid_h, grid_w) in zip(images, boxes, data["spatial_shapes"].tolist()):
                width, height = image.size
                scale = torch.tensor([grid_w * patch / width, grid_h * patch / height] * 2)
                data["boxes"].append(torch.as_tensor(image_boxes, dtype=torch.float32).reshape(-1, 4) * scale)
        return data

    def preprocess(self, images, boxes: list[torch.Tensor] | None = None, max_num_patches: int | None = None):
        """Deprecated: use ``processor(images=..., boxes=...)``. Returns :class:`FGCLIP2Images`, or
        ``(FGCLIP2Images, boxes in input pixels)`` when boxes are given."""
        warnings.warn("FGCLIP2Processor.preprocess is deprecated; call the processor: processor(images=..., "
                      "boxes=...) returns a BatchFeature", FutureWarning, stacklevel=2)
        batch = self(images=images, boxes=boxes, max_num_patches=max_num_patches)
        images = FGCLIP2Images(batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"])
        return images if boxes is None else (images, batch["boxes"])
