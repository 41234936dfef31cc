"""Pre-processing for FG-CLIP 2: lower-cased multilingual tokenisation and NaFlex images with boxes.

Texts are lower-cased (as FG-CLIP 2 was trained) and padded to exactly 64 tokens (short and
region texts) or 196 (long texts), because SigLIP pools the last position. Images go through
transformers' PIL-backed ``Siglip2ImageProcessorPil`` (PIL bilinear resizing, as the official
``Fgclip2ImageProcessor``): resized with their aspect ratio kept to at most ``max_num_patches``
patches of 16 pixels, cut into patches and padded to that budget. The budget is fixed, or
FG-CLIP 2's size rule (``"auto"``, the official ``dynamic_max_patches``): as the official image
processor and training collator do, every image of one call is resized with the LARGEST budget
among them (``budget_scope="call"``); ``budget_scope="image"`` gives each image its own budget
(as if each were its own call) and pads to the largest. Boxes in original pixels are mapped to
input pixels of each image's own patch grid.
"""
from __future__ import annotations

import json
import os

import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

from .configuration_fgclip2 import FGCLIP2Config
from .errors import write_atomically
from .image_io import load_image
from .processing_common import DualEncoderProcessor, concat_image_batches, split_hub_kwargs, warn_truncated


def auto_patch_budget(image: Image.Image, patch_size: int = 16) -> int:
    """FG-CLIP 2's inference patch budget: the smallest of 128 / 256 / 576 / 784 / 1024 patches
    that holds the image's native ``(w // p) * (h // p)`` patches (1024 at most)."""
    native = (image.width // patch_size) * (image.height // patch_size)
    return next((budget for budget in (128, 256, 576, 784) if native <= budget), 1024)


BUDGET_SCOPES = ("call", "image")
# Keys of preprocessor_config.json the official Fgclip2ImageProcessor takes (anything else is ignored).
OFFICIAL_IMAGE_KEYS = ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                       "image_std", "do_convert_rgb", "patch_size", "max_num_patches")


def load_image_processor(path: str | os.PathLike, **kwargs) -> tuple[Siglip2ImageProcessorPil, int | str]:
    """A checkpoint's ``preprocessor_config.json`` read as the official ``Fgclip2ImageProcessor``
    reads it: its resizing / rescaling / normalisation keys, ``patch_size`` and ``max_num_patches``,
    and ``dynamic_max_patches`` (True when absent), which makes the budget ``"auto"``.

    Returns:
        the PIL-backed image processor and the patch budget (an int, or ``"auto"``).
    """
    config, _ = ImageProcessingMixin.get_image_processor_dict(path, **kwargs)
    options = {key: config[key] for key in OFFICIAL_IMAGE_KEYS if config.get(key) is not None}
    image_processor = Siglip2ImageProcessorPil(**options)
    dynamic = config.get("dynamic_max_patches", True)
    return image_processor, "auto" if dynamic else image_processor.max_num_patches


class FGCLIP2Processor(DualEncoderProcessor):
    """Tokenizer + NaFlex image processor of an FG-CLIP 2 model.

    Args:
        tokenizer: the checkpoint's tokenizer (Gemma's multilingual vocabulary for the
            released models), e.g. ``AutoTokenizer.from_pretrained("qihoo360/fg-clip2-base")``.
        image_processor: a ``Siglip2ImageProcessorPil`` (PIL resizing, as the official one); built
            with ``patch_size`` if omitted.
        short_length / long_length: token lengths of short (and region) and long texts.
        max_num_patches: patch budget per image (default: the image processor's), or
            ``"auto"``: FG-CLIP 2's rule, which grows the budget with the image
            (:func:`auto_patch_budget`, the official ``dynamic_max_patches``).
        budget_scope: with ``"auto"``, ``"call"`` (the official rule: every image of a call takes
            the largest budget among them) or ``"image"`` (each image its own budget, as if
            processed alone, then padded to the largest).
        lowercase: lower-case texts before tokenizing (FG-CLIP 2 trains on lower-cased texts; some
            official evaluation scripts tokenize the raw text).

    A call takes, beside the shared arguments, the text options ``max_length`` (texts padded to that
    many tokens instead of the kind's length, e.g. 64 on the long path as the official retrieval
    scripts do) and ``lowercase``, and the image options ``max_num_patches`` and ``budget_scope``.
    """

    text_options = ("max_length", "lowercase")

    def __init__(
        self,
        tokenizer,
        image_processor: Siglip2ImageProcessorPil | None = None,
        short_length: int = 64,
        long_length: int = 196,
        patch_size: int = 16,
        max_num_patches: int | str | None = None,
        budget_scope: str = "call",
        lowercase: bool = True,
    ):
        if budget_scope not in BUDGET_SCOPES:
            raise ValueError(f"budget_scope must be one of {BUDGET_SCOPES}, got {budget_scope!r}")
        super().__init__(tokenizer, image_processor or Siglip2ImageProcessorPil(patch_size=patch_size))
        self.lowercase = lowercase
        self.budget_scope = budget_scope
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
        cls, path: str | os.PathLike, max_num_patches: int | str | None = "auto", budget_scope: str | None = None,
        **kwargs,
    ) -> "FGCLIP2Processor":
        """Tokenizer, image processor and settings of a checkpoint directory or hub id.

        The settings (text lengths, lower-casing, budget scope) are those of ``processor_config.json``,
        else (official checkpoints, fgclip < 0.2) the text lengths of ``config.json``. The image
        processor is read as the official processor reads it (:func:`load_image_processor`). The
        budget is FG-CLIP 2's size rule by default (what the released configs give); ``None`` takes
        the saved one (``processor_config.json``'s, else ``"auto"`` unless ``preprocessor_config.json``
        sets ``dynamic_max_patches: false``, then its ``max_num_patches``). Other keyword arguments
        override saved settings."""
        hub, overrides = split_hub_kwargs(kwargs)
        image_processor, saved_budget = load_image_processor(path, **hub)
        processor_dict, _ = cls.get_processor_dict(path, **hub)
        if processor_dict.get("processor_class") == cls.__name__:
            settings = {key: processor_dict[key] for key in ("short_length", "long_length", "lowercase",
                                                             "budget_scope") if key in processor_dict}
            saved_budget = processor_dict.get("max_num_patches", saved_budget)
        else:
            config = FGCLIP2Config.from_pretrained(path, **hub)
            settings = {"short_length": config.short_text_length, "long_length": config.long_text_length}
        settings = {**settings, **overrides}
        if budget_scope is not None:
            settings["budget_scope"] = budget_scope
        return cls(
            cls._load_tokenizer_from_pretrained("tokenizer", path, **hub),
            image_processor,
            max_num_patches=saved_budget if max_num_patches is None else max_num_patches,
            **settings,
        )

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> list[str]:
        """transformers' files (``processor_config.json``, tokenizer), and the official layout's
        ``preprocessor_config.json`` (with its ``dynamic_max_patches``) for the official code."""
        files = super().save_pretrained(directory, **kwargs)
        config = {**self.image_processor.to_dict(), "dynamic_max_patches": self.max_num_patches == "auto"}
        config_file = os.path.join(directory, IMAGE_PROCESSOR_NAME)
        write_atomically(config_file, json.dumps(config, indent=2, sort_keys=True))
        return [*files, config_file]

    def patch_budget(self, image: Image.Image, max_num_patches: int | str | None = None) -> int:
        """The patch budget of ``image`` alone (the processor's, or ``max_num_patches`` for this call)."""
        budget = self.max_num_patches if max_num_patches is None else max_num_patches
        return auto_patch_budget(image, self.image_processor.patch_size) if budget == "auto" else budget

    def patch_budgets(self, images: list[Image.Image], max_num_patches: int | str | None = None,
                      budget_scope: str | None = None) -> list[int]:
        """The budget each image of one call is resized with: the largest of the call under the
        ``"call"`` scope (the official rule), each image's own under ``"image"``."""
        scope = self.budget_scope if budget_scope is None else budget_scope
        if scope not in BUDGET_SCOPES:
            raise ValueError(f"budget_scope must be one of {BUDGET_SCOPES}, got {scope!r}")
        budgets = [self.patch_budget(image, max_num_patches) for image in images]
        return [max(budgets)] * len(budgets) if scope == "call" else budgets

    # ------------------------------------------------------------------ text
    def _encode_text(self, texts: list[str], text_kind: str, padding: str, max_length: int | None = None,
                     lowercase: bool | None = None) -> dict[str, torch.Tensor]:
        """``texts`` (lower-cased unless ``lowercase`` is false) as ``input_ids`` / ``attention_mask``,
        (N, 64) or (N, 196) for long, or (N, ``max_length``).

        Over-long texts are cut with a warning that counts them. ``padding`` must be
        ``"max_length"``: SigLIP pools the last position, so the length is part of the feature.
        """
        if padding != "max_length":
            raise ValueError(f"FG-CLIP 2 texts are padded to their exact length (padding='max_length'), got {padding!r}")
        if self.lowercase if lowercase is None else lowercase:
            texts = [text.lower() for text in texts]
        limit = self.max_length(text_kind)
        max_length = limit if max_length is None else max_length
        if not 0 < max_length <= limit:
            raise ValueError(f"max_length of {text_kind} texts must lie in 1..{limit}, got {max_length}")
        warn_truncated(self.tokenizer, texts, max_length, text_kind)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                                 return_tensors="pt", return_attention_mask=True)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # ------------------------------------------------------------------ images
    def _encode_images(self, images: list, boxes, max_num_patches: int | str | None = None,
                       budget_scope: str | None = None) -> dict:
        """NaFlex ``pixel_values`` / ``pixel_attention_mask`` / ``spatial_shapes``, each image resized to
        its patch budget (:meth:`patch_budgets`) and padded to the largest of the call; ``boxes``
        mapped to input pixels of each image's own grid (``0..w_i * p`` by ``0..h_i * p``)."""
        images = [load_image(image) for image in images]
        budgets = self.patch_budgets(images, max_num_patches, budget_scope)
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
                scale = torch.tensor([grid_w * patch / width, grid_h * patch / height] * 2, dtype=torch.float64)
                # in float64, so that a box edge on the image's edge maps onto the grid's edge exactly in float32
                data["boxes"].append((torch.as_tensor(image_boxes, dtype=torch.float64).reshape(-1, 4) * scale).float())
        return data
