"""Pre-processing for FG-CLIP: CLIP BPE tokenisation per text kind, images and boxes.

The tokenizer is transformers' ``CLIPTokenizer`` built offline from the CLIP BPE merges
that ship inside the ``open_clip_torch`` wheel, so nothing is fetched from a hub.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .configuration_fgclip import FGCLIPConfig
from .modeling_fgclip import TEXT_KINDS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("squash", "pad")
PROCESSOR_FILE = "fgclip_processor.json"
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


def check_texts(texts: list[str] | str) -> list[str]:
    """``texts`` as a non-empty list of strings (one string is a list of one)."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("texts is empty: give at least one text")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
    return list(texts)


def check_images(images, boxes: list | None = None) -> list:
    """``images`` as a non-empty list (one image is a list of one), with one box list each if boxes are given."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image")
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} box lists for {len(images)} images")
    return list(images)


def warn_truncated(tokenizer, texts: list[str], max_length: int, kind: str) -> None:
    """Warn, with their count, when texts are longer than ``max_length`` tokens (they will be cut)."""
    full_lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    cut = sum(length > max_length for length in full_lengths)
    if cut:
        warnings.warn(f"{cut} of {len(texts)} {kind} texts exceed {max_length} tokens and were truncated", stacklevel=3)


def load_image(image: Image.Image | str | os.PathLike) -> Image.Image:
    """Open a path or take a PIL image, as RGB (grayscale, palette and RGBA are converted)."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image file not found: {image}")
        try:
            image = Image.open(image)
            image.load()
        except OSError as error:
            raise ValueError(f"cannot read image {image}: {error}") from error
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


class TextLengths:
    """Token lengths per text kind: ``long_length`` for long texts, ``short_length`` for the others."""

    short_length: int
    long_length: int

    def max_length(self, kind: str) -> int:
        if kind not in TEXT_KINDS:
            raise ValueError(f"unknown text kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")
        return self.long_length if kind == "long" else self.short_length


class FGCLIPProcessor(TextLengths):
    """Tokenizer + image processor of an FG-CLIP model.

    Args:
        tokenizer: a CLIP BPE tokenizer; built from ``open_clip_torch``'s vocabulary if omitted.
        image_size: square input size of the model (224 for B/16, 336 for L/14).
        short_length / long_length: token lengths of short (and region) and long texts.
        resize_mode: ``"squash"`` resizes to ``image_size`` squared ignoring the aspect ratio
            (upstream FG-CLIP); ``"pad"`` first pads to a square with the mean colour.
    """

    def __init__(
        self,
        tokenizer: CLIPTokenizer | None = None,
        image_size: int = 224,
        short_length: int = 77,
        long_length: int = 248,
        resize_mode: str = "squash",
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
    ):
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}")
        self.tokenizer = tokenizer if tokenizer is not None else clip_bpe_tokenizer()
        self.image_size = image_size
        self.short_length = short_length
        self.long_length = long_length
        self.resize_mode = resize_mode
        self.image_processor = CLIPImageProcessor(
            size={"height": image_size, "width": image_size},
            do_center_crop=False,
            image_mean=list(image_mean),
            image_std=list(image_std),
        )

    @classmethod
    def for_config(cls, config: FGCLIPConfig, **kwargs) -> "FGCLIPProcessor":
        """A processor matching a model configuration (image size and text lengths)."""
        return cls(
            image_size=config.vision_config.image_size,
            short_length=config.short_text_length,
            long_length=config.long_text_length,
            **kwargs,
        )

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer, the image processor and the FG-CLIP settings to ``directory``."""
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        settings = {"image_size": self.image_size, "short_length": self.short_length,
                    "long_length": self.long_length, "resize_mode": self.resize_mode}
        Path(directory, PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> "FGCLIPProcessor":
        """Load a processor saved by :meth:`save_pretrained`, or derive one from a model directory or hub id.

        A model directory without processor files (e.g. an upstream checkpoint) gets a
        processor built from its ``config.json`` and the offline CLIP vocabulary.
        """
        directory = Path(directory)
        if not directory.is_dir():  # a hub id: only its config.json is needed
            from transformers.utils import cached_file

            directory = Path(cached_file(str(directory), "config.json")).parent
        settings_file = directory / PROCESSOR_FILE
        if settings_file.is_file():
            settings = json.loads(settings_file.read_text())
            image_processor = CLIPImageProcessor.from_pretrained(directory)
            settings.setdefault("image_mean", tuple(image_processor.image_mean))
            settings.setdefault("image_std", tuple(image_processor.image_std))
            tokenizer = CLIPTokenizer.from_pretrained(directory)
            return cls(tokenizer=tokenizer, **{**settings, **overrides})
        if (directory / "config.json").is_file():
            return cls.for_config(FGCLIPConfig.from_pretrained(directory), **overrides)
        raise FileNotFoundError(f"no {PROCESSOR_FILE} or config.json in {directory}")

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: list[str] | str, kind: str = "short", padding: str = "max_length") -> torch.Tensor:
        """Token ids of ``texts`` for one text kind.

        Args:
            kind: ``"long"`` pads/truncates to ``long_length`` (248), the others to
                ``short_length`` (77).
            padding: ``"max_length"`` pads to that length (upstream); ``"longest"`` pads to the
                longest text of the call, which gives the same features for less compute.
        Returns:
            (N, L) ids; each row holds bos, the text and eos, padded with eos. Over-long texts
            are cut (eos kept) with a warning that counts them.
        """
        texts = check_texts(texts)
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        max_length = self.max_length(kind)
        warn_truncated(self.tokenizer, texts, max_length, kind)
        encoded = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return encoded["input_ids"]

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

    def preprocess(
        self,
        images: list[Image.Image | str | os.PathLike] | Image.Image | str | os.PathLike,
        boxes: list[torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Images (PIL or paths) -> pixel_values (B, 3, S, S), CLIP mean/std.

        Args:
            boxes: optional, one (K_i, 4) xyxy tensor per image in original pixels; returned
                mapped to input pixels of the (S, S) model input.
        """
        images = check_images(images, boxes)
        squares, mapped = [], []
        for index, image in enumerate(images):
            image = load_image(image)
            square, offset_x, offset_y = self._square(image)
            squares.append(square)
            if boxes is not None:
                image_boxes = torch.as_tensor(boxes[index], dtype=torch.float32).reshape(-1, 4)
                scale_x = self.image_size / square.width
                scale_y = self.image_size / square.height
                offset = torch.tensor([offset_x, offset_y, offset_x, offset_y])
                scale = torch.tensor([scale_x, scale_y, scale_x, scale_y])
                mapped.append((image_boxes + offset) * scale)
        pixel_values = self.image_processor(squares, return_tensors="pt")["pixel_values"]
        return pixel_values if boxes is None else (pixel_values, mapped)
