"""Pre-processing for FG-CLIP: CLIP BPE tokenisation per text kind, images and boxes.

The tokenizer is transformers' ``CLIPTokenizer`` built offline from the CLIP BPE merges
that ship inside the ``open_clip_torch`` wheel, so nothing is fetched from a hub.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.utils import PROCESSOR_NAME

from .configuration_fgclip import FGCLIPConfig
from .errors import CheckpointError
from .image_io import load_image
from .processing_common import DualEncoderProcessor, split_hub_kwargs, warn_truncated

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("squash", "pad")
LEGACY_PROCESSOR_FILE = "fgclip_processor.json"  # settings file of fgclip < 0.2 (read, no longer written)
CLIP_BPE_MERGES = 49152 - 256 - 2  # merges used by CLIP's 49408-token vocabulary


@lru_cache(maxsize=1)
def _clip_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the CLIP BPE vocabulary ships with open_clip_torch: pip install open_clip_torch")
    bpe_path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_BPE_MERGES + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_bpe_tokenizer() -> CLIPTokenizer:
    """The OpenAI CLIP tokenizer (49408 tokens, bos 49406, eos = pad 49407), built offline."""
    vocab, merges = _clip_bpe_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


class FGCLIPProcessor(DualEncoderProcessor):
    """Tokenizer + image processor of an FG-CLIP model.

    Args:
        tokenizer: a CLIP BPE tokenizer; built from ``open_clip_torch``'s vocabulary if omitted.
        image_processor: a ``CLIPImageProcessor``; built from ``image_size``, ``image_mean`` and
            ``image_std`` if omitted.
        image_size: square input size of the model (224 for B/16, 336 for L/14).
        short_length / long_length: token lengths of short (and region) and long texts.
        resize_mode: ``"squash"`` resizes to ``image_size`` squared ignoring the aspect ratio
            (upstream FG-CLIP); ``"pad"`` first pads to a square with the mean colour.
    """

    minimal_padding = "longest"  # causal mask + first-eos pooling: later columns change nothing

    def __init__(
        self,
        tokenizer: CLIPTokenizer | None = None,
        image_processor: CLIPImageProcessor | None = None,
        image_size: int = 224,
        short_length: int = 77,
        long_length: int = 248,
        resize_mode: str = "squash",
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
    ):
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}")
        if image_processor is None:
            image_processor = CLIPImageProcessor(
                size={"height": image_size, "width": image_size},
                do_center_crop=False,
                image_mean=list(image_mean),
                image_std=list(image_std),
            )
        super().__init__(tokenizer if tokenizer is not None else clip_bpe_tokenizer(), image_processor)
        self.image_size = image_size
        self.short_length = short_length
        self.long_length = long_length
        self.resize_mode = resize_mode

    @classmethod
    def for_config(cls, config: FGCLIPConfig, tokenizer: CLIPTokenizer | None = None, **kwargs) -> "FGCLIPProcessor":
        """A processor matching a model configuration (image size and text lengths)."""
        return cls(
            tokenizer=tokenizer,
            image_size=config.vision_config.image_size,
            short_length=config.short_text_length,
            long_length=config.long_text_length,
            **kwargs,
        )

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> "FGCLIPProcessor":
        """Load a processor saved by :meth:`save_pretrained` (or by fgclip < 0.2), or derive one from a model
        directory or hub id; keyword arguments other than file-locating ones override saved settings.

        A model directory without processor files (e.g. an upstream checkpoint) gets a
        processor built from its ``config.json`` and the offline CLIP vocabulary.
        """
        hub, overrides = split_hub_kwargs(kwargs)
        directory = Path(directory)
        if not directory.is_dir():  # a hub id: only its config.json is needed
            from transformers.utils import cached_file

            directory = Path(cached_file(str(directory), "config.json", **hub)).parent
        if (directory / PROCESSOR_NAME).is_file():
            processor_dict, _ = cls.get_processor_dict(directory)
            arguments = cls._get_arguments_from_pretrained(directory, processor_dict)
            return cls.from_args_and_dict(arguments, processor_dict, **overrides)
        legacy_file = directory / LEGACY_PROCESSOR_FILE
        if legacy_file.is_file():
            try:
                settings = json.loads(legacy_file.read_text())
                image_processor = CLIPImageProcessor.from_pretrained(directory)
                tokenizer = CLIPTokenizer.from_pretrained(directory)
            except (OSError, ValueError) as error:
                raise CheckpointError(legacy_file, f"processor saved by fgclip < 0.2 cannot be read ({error}); "
                                                   "re-save it with FGCLIPProcessor.save_pretrained") from None
            return cls(tokenizer=tokenizer, image_processor=image_processor, **{**settings, **overrides})
        if (directory / "config.json").is_file():
            return cls.for_config(FGCLIPConfig.from_pretrained(directory), **overrides)
        raise FileNotFoundError(f"no {PROCESSOR_NAME}, {LEGACY_PROCESSOR_FILE} or config.json in {directory}")

    # ------------------------------------------------------------------ text
    def _encode_text(self, texts: list[str], text_kind: str, padding: str) -> dict[str, torch.Tensor]:
        """``input_ids`` (N, L) and ``attention_mask``: bos, the text and eos, padded with eos to the
        kind's length (``max_length``, upstream) or to the longest text (``longest``, same features).
        Over-long texts are cut (eos kept) with a warning that counts them."""
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        max_length = self.max_length(text_kind)
        warn_truncated(self.tokenizer, texts, max_length, text_kind)
        encoded = self.tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # ------------------------------------------------------------------ images
    def _square(self, image: Image.Image) -> tuple[Image.Image, float, float]:
        """Pad to a square with the mean colour (``pad`` mode); returns the image and the offset."""
        width, height = image.size
        if self.resize_mode == "squash" or width == height:
            return image, 0.0, 0.0
        side = max(width, height)
        fill = tuple(round(255 * m) for m in self.image_processor.image_mean)
        canvas = Image.new("RGB", (side, side), fill)
        offset_x, offset_y = (side - width) // 2, (side - height) // 2
        canvas.paste(image, (offset_x, offset_y))
        return canvas, float(offset_x), float(offset_y)

    def _encode_images(self, images: list, boxes) -> dict:
        squares, mapped = [], []
        for index, image in enumerate(images):
            image = load_image(image)
            square, offset_x, offset_y = self._square(image)
            squares.append(square)
            if boxes is not None:
                # in float64, so that a box edge on the image's edge maps onto the input's edge exactly in float32
                image_boxes = torch.as_tensor(boxes[index], dtype=torch.float64).reshape(-1, 4)
                scale_x = self.image_size / square.width
                scale_y = self.image_size / square.height
                offset = torch.tensor([offset_x, offset_y, offset_x, offset_y], dtype=torch.float64)
                scale = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float64)
                mapped.append(((image_boxes + offset) * scale).float())
        data = {"pixel_values": self.image_processor(squares, return_tensors="pt")["pixel_values"]}
        if boxes is not None:
            data["boxes"] = mapped
        return data
