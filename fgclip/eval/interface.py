"""The small model interface the evaluation needs (an image tower, region features, a text
tower) and checkpoint loaders.

Two implementations:

* :class:`FGCLIPEvalModel` wraps :class:`~fgclip.FGCLIPModel` (our checkpoints and upstream
  ``qihoo360/fg-clip-*`` ones): regions from its dense value-path features and RoIAlign,
  long texts through its 248-token path.
* :class:`CLIPEvalModel` wraps a plain transformers ``CLIPModel`` as the baseline. Its region
  features use the same recipe as FG-CLIP (the last block's value path on the tokens entering
  it, ``post_layernorm``, ``visual_projection``, RoIAlign 1x1 aligned). CLIP has no long-text
  path: long texts are cut to 77 tokens and go through its only text path.

Both read images through :class:`~fgclip.FGCLIPProcessor` (squash resize, CLIP mean / std), so
boxes map to input pixels the same way for both. All returned features are L2-normalised
float32.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from ..modeling_fgclip import TEXT_KINDS, FGCLIPModel, check_boxes, roi_pool, value_path_tokens
from ..processing_fgclip import FGCLIPProcessor

MODEL_TYPES = ("auto", "fgclip", "clip")
# A weight only FG-CLIP checkpoints have (upstream ones keep ``model_type: clip`` in config.json).
FGCLIP_MARKER_KEY = "text_model.embeddings.position_embedding_res.weight"


class EvalModel(ABC):
    """What the benchmarks need from a dual encoder: an image tower, region features and a
    text tower. Every method runs one backbone pass per image and returns L2-normalised
    float32 features.

    Attributes:
        processor: turns PIL images (and boxes in original pixels) into model inputs; it is
            pickled into DataLoader workers.
        device: where the inputs of the ``encode_*`` methods must live.
    """

    processor: FGCLIPProcessor
    device: torch.device

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D) global image embeddings."""

    @abstractmethod
    def encode_regions(self, pixel_values: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(B, 3, S, S) and B (K_i, 4) xyxy boxes in input pixels -> (sum K_i, D) region embeddings."""

    @abstractmethod
    def encode_texts(self, texts: list[str], kind: str = "short") -> torch.Tensor:
        """(N, D) embeddings of ``texts`` for one text kind."""

    def text_kind(self, kind: str) -> str:
        """The text path ``kind`` actually uses (texts embedded the same way share a cache)."""
        if kind not in TEXT_KINDS:
            raise ValueError(f"unknown text kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")
        return kind


class FGCLIPEvalModel(EvalModel):
    """:class:`EvalModel` over an :class:`~fgclip.FGCLIPModel`."""

    def __init__(self, model: FGCLIPModel, processor: FGCLIPProcessor):
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device

    def encode_images(self, pixel_values):
        return F.normalize(self.model.get_image_features(pixel_values).float(), dim=-1)

    def encode_regions(self, pixel_values, boxes):
        # Dense features skip the last block's attention: regions never need the CLS path.
        return F.normalize(self.model.get_region_features(pixel_values, boxes).float(), dim=-1)

    def encode_texts(self, texts, kind="short"):
        kind = self.text_kind(kind)
        input_ids = self.processor.tokenize(texts, kind=kind, padding="longest").to(self.device)
        return F.normalize(self.model.get_text_features(input_ids, kind=kind).float(), dim=-1)


class CLIPEvalModel(EvalModel):
    """:class:`EvalModel` over a plain transformers ``CLIPModel`` (the baseline)."""

    def __init__(self, model: CLIPModel, processor: FGCLIPProcessor):
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device

    def text_kind(self, kind):
        return "short" if super().text_kind(kind) == "long" else kind

    def encode_images(self, pixel_values):
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def encode_regions(self, pixel_values, boxes):
        vision = self.model.vision_model
        hidden = vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
        tokens = value_path_tokens(vision, self.model.visual_projection, hidden)
        patch = vision.config.patch_size
        grid_h, grid_w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        dense = tokens.reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[-1])
        checked = check_boxes(boxes, pixel_values.shape[0], *pixel_values.shape[-2:])
        return F.normalize(roi_pool(dense, checked, patch).float(), dim=-1)

    def encode_texts(self, texts, kind="short"):
        kind = self.text_kind(kind)
        input_ids = self.processor.tokenize(texts, kind=kind, padding="longest").to(self.device)
        pooled = self.model.text_model(input_ids=input_ids).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)


# ---------------------------------------------------------------------------------- loading
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; a bare ``cuda`` under torchrun -> ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _checkpoint_keys(directory: Path) -> set[str]:
    """Parameter names stored in a transformers checkpoint directory (read without loading tensors)."""
    index_file = next((p for p in directory.glob("*.index.json")), None)
    if index_file is not None:
        return set(json.loads(index_file.read_text()).get("weight_map", {}))
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="pt") as handle:
            return set(handle.keys())
    bin_file = directory / "pytorch_model.bin"
    if bin_file.is_file():
        return set(torch.load(bin_file, map_location="meta", weights_only=True, mmap=True))
    raise FileNotFoundError(f"no model.safetensors, pytorch_model.bin or *.index.json in {directory}")


def detect_model_type(path: str | os.PathLike) -> str:
    """``"fgclip"`` or ``"clip"`` for a checkpoint directory.

    ``model_type: fgclip`` in config.json means FG-CLIP; ``model_type: clip`` means FG-CLIP
    when the weights hold the long position table (upstream checkpoints), else plain CLIP.
    """
    directory = Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a transformers checkpoint directory)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == "fgclip":
        return "fgclip"
    if model_type != "clip":
        raise ValueError(f"{config_file}: model_type {model_type!r} is neither 'fgclip' nor 'clip'")
    return "fgclip" if FGCLIP_MARKER_KEY in _checkpoint_keys(directory) else "clip"


def load_eval_model(
    path: str | os.PathLike, model_type: str = "auto", device: str | torch.device = "cpu"
) -> EvalModel:
    """Load a checkpoint directory as an :class:`EvalModel` on ``device``.

    Args:
        model_type: ``"fgclip"``, ``"clip"`` (plain transformers CLIP, the baseline) or
            ``"auto"`` (see :func:`detect_model_type`).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    if model_type == "auto":
        model_type = detect_model_type(path)
    device = torch.device(device)
    processor = FGCLIPProcessor.from_pretrained(path)
    if model_type == "fgclip":
        return FGCLIPEvalModel(FGCLIPModel.from_pretrained(path).to(device), processor)
    return CLIPEvalModel(CLIPModel.from_pretrained(path).to(device), processor)
