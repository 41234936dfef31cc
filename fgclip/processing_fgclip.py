"""Pre-processing for FG-CLIP: CLIP BPE tokenisation per text kind, images and boxes.

The tokenizer is transformers' ``CLIPTokenizer`` built offline from the CLIP BPE merges
that ship inside the ``open_clip_torch`` wheel, so nothing is fetched from a hub.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature, CLIPImageProcessor, CLIPTokenizer, ProcessorMixin
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.utils import PROCESSOR_NAME

from .configuration_fgclip import FGCLIPConfig
from .errors import CheckpointError, ImageError
from .modeling_fgclip import check_text_kind

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


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey (PNG, TIFF): 0..65535
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open_image(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """``Image.open`` of a path or encoded bytes; a missing, empty or non-image file is an :class:`ImageError`."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError(name, "empty image data")
        source = io.BytesIO(source)
    elif not os.path.isfile(source):
        raise ImageError(name, "image file not found")
    elif os.path.getsize(source) == 0:
        raise ImageError(name, "empty file (0 bytes), not an image")
    try:
        return Image.open(source)
    except Image.DecompressionBombError as error:
        raise ImageError(name, f"{error} (PIL's decompression-bomb guard; raise PIL.Image.MAX_IMAGE_PIXELS "
                               "for a trusted file)") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(name, f"not an image file PIL can read ({error})") from None


def load_image(image: Image.Image | str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
    """The project's one image reader (CLI, evaluation, training data, curation, LLaVA data): a path,
    encoded bytes or a PIL image, as an RGB PIL image.

    EXIF orientation is applied; 16-bit grey images are scaled to 8 bits (65535 -> 255); other
    modes are converted by PIL (``convert("RGB")``, as FG-CLIP's and LLaVA's loaders do: an alpha
    channel is dropped, not blended). A missing, empty, truncated or non-image file, or one above
    PIL's pixel limit, raises :class:`~fgclip.errors.ImageError` naming ``name`` (default: the path).
    """
    if not isinstance(image, Image.Image):
        if not isinstance(image, (str, os.PathLike, bytes)):
            raise TypeError(f"expected a PIL image, a path or bytes, got {type(image).__name__}")
        name = name or (str(image) if not isinstance(image, bytes) else "<image bytes>")
        opened = _open_image(image, name)
        try:
            opened.load()
        except Image.DecompressionBombError as error:
            raise ImageError(name, f"{error} (PIL's decompression-bomb guard)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(name, f"truncated or corrupt image ({error})") from None
        image = opened
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64).clip(0, 65535) / 257.0
        image = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_size(path: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file as :func:`load_image` gives it (EXIF orientation applied),
    read from the header only; a file that is not a readable image raises :class:`ImageError`."""
    with _open_image(path, name or str(path)) as image:
        width, height = image.size
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def concat_image_batches(batches: list) -> BatchFeature:
    """One image batch of several processor batches (``BatchFeature`` or dicts of image keys).

    Tensors are joined along the batch dimension; where their second dimension differs (NaFlex
    patch sequences and their masks) the shorter ones are zero-padded, i.e. masked; ``boxes``
    lists are joined.
    """
    joined = {}
    for key in batches[0]:
        values = [batch[key] for batch in batches]
        if isinstance(values[0], list):
            joined[key] = [item for value in values for item in value]
        elif isinstance(values[0], torch.Tensor):
            if values[0].ndim >= 2 and len({value.shape[1] for value in values}) > 1:
                length = max(value.shape[1] for value in values)
                values = [torch.nn.functional.pad(value, (0, 0) * (value.ndim - 2) + (0, length - value.shape[1]))
                          for value in values]
            joined[key] = torch.cat(values)
        else:
            joined[key] = values[0]
    return BatchFeature(joined)


# Keyword arguments of ``from_pretrained`` that locate files (the Auto classes and the pipeline add some).
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder",
              "_from_auto", "_from_pipeline")


def split_hub_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """``kwargs`` of ``from_pretrained`` as (file-locating ones, processor settings); ``trust_remote_code`` is
    dropped (both families are local code)."""
    kwargs = {key: value for key, value in kwargs.items() if key != "trust_remote_code"}
    hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
    return hub, kwargs


class DualEncoderProcessor(ProcessorMixin):
    """What the processors of both model families share: a transformers ``ProcessorMixin`` (an image
    processor and a tokenizer, saved as transformers saves them: ``processor_config.json`` and the
    tokenizer files) whose one call returns a ``BatchFeature``.

    Subclasses set the token lengths and implement :meth:`_encode_text` and :meth:`_encode_images`.

    Attributes:
        minimal_padding: the shortest text padding that gives the same features (``"longest"``
            for CLIP's first-eos pooling, ``"max_length"`` where the last position is pooled).
    """

    short_length: int
    long_length: int
    minimal_padding: str = "max_length"
    text_options: tuple[str, ...] = ()  # keyword options of a call that go to _encode_text, not to the images

    def max_length(self, text_kind: str) -> int:
        return self.long_length if check_text_kind(text_kind) == "long" else self.short_length

    def __call__(
        self,
        images=None,
        text: list[str] | str | None = None,
        boxes: list[torch.Tensor] | None = None,
        text_kind: str = "short",
        padding: str = "max_length",
        return_tensors: str = "pt",
        **options,
    ) -> BatchFeature:
        """Images and / or texts as one model batch.

        Args:
            images: PIL images or paths (one image is a list of one).
            text: texts of one kind, tokenized for ``text_kind`` (``short``, ``long``, ``region``).
            boxes: one (K_i, 4) xyxy tensor per image in original pixels; the batch's ``boxes``
                are mapped into the model input's pixels.
            padding: ``"max_length"`` (the kind's length) or ``"longest"`` where the family allows it.
            options: family options of this call: the text ones named in ``text_options`` (e.g. FG-CLIP
                2's ``max_length``), the others for the images (e.g. FG-CLIP 2's ``max_num_patches``).
        Returns:
            ``BatchFeature`` with ``pixel_values`` (and the family's other image keys), ``boxes``
            when given, ``input_ids``, ``attention_mask`` and ``text_kind`` when texts are given;
            ``model.get_image_features(**batch)`` etc. take it as it is.
        """
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if images is None and text is None:
            raise ValueError("give images, text or both")
        if boxes is not None and images is None:
            raise ValueError("boxes need the images they belong to")
        text_options = {key: options.pop(key) for key in self.text_options if key in options}
        data = {}
        if images is not None:
            data.update(self._encode_images(check_images(images, boxes), boxes, **options))
        if text is not None:
            data.update(self._encode_text(check_texts(text), text_kind, padding, **text_options))
            data["text_kind"] = text_kind
        return BatchFeature(data)

    def _encode_text(self, texts: list[str], text_kind: str, padding: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _encode_images(self, images: list, boxes, **options) -> dict:
        raise NotImplementedError


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
                image_boxes = torch.as_tensor(boxes[index], dtype=torch.float32).reshape(-1, 4)
                scale_x = self.image_size / square.width
                scale_y = self.image_size / square.height
                offset = torch.tensor([offset_x, offset_y, offset_x, offset_y])
                scale = torch.tensor([scale_x, scale_y, scale_x, scale_y])
                mapped.append((image_boxes + offset) * scale)
        data = {"pixel_values": self.image_processor(squares, return_tensors="pt")["pixel_values"]}
        if boxes is not None:
            data["boxes"] = mapped
        return data
