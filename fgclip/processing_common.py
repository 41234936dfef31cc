"""What both model families' processors share: :class:`DualEncoderProcessor` (one call for images,
texts and boxes returning a ``BatchFeature``), the checks of its inputs, the truncation warning,
``from_pretrained`` keyword splitting and :func:`concat_image_batches`, which joins image batches.
Each ``processing_*`` file holds one family's processor built on these.
"""
from __future__ import annotations

import warnings

import torch
from transformers import BatchFeature, ProcessorMixin

from .modeling_common import check_text_kind

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
