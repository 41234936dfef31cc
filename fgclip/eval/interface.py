"""The small model interface the evaluation needs (an image tower, region features, a text
tower) and checkpoint loaders.

Three implementations:

* :class:`FGCLIPEvalModel` wraps :class:`~fgclip.FGCLIPModel` (our checkpoints and upstream
  ``qihoo360/fg-clip-*`` ones): regions from its dense value-path features and RoIAlign,
  long texts through its 248-token path.
* :class:`CLIPEvalModel` wraps a plain transformers ``CLIPModel`` as the baseline. Its region
  features use the same recipe as FG-CLIP (the last block's value path on the tokens entering
  it, ``post_layernorm``, ``visual_projection``, RoIAlign 1x1 aligned). CLIP has no long-text
  path: long texts are cut to 77 tokens and go through its only text path.
* :class:`FGCLIP2EvalModel` wraps :class:`~fgclip.FGCLIP2Model` (bilingual, NaFlex images):
  regions from its dense head on each image's own patch grid, a text head per kind.

The first two read images through :class:`~fgclip.FGCLIPProcessor` (squash resize, CLIP mean /
std), so boxes map to input pixels the same way for both; FG-CLIP 2 keeps each image's aspect
ratio (:class:`NaFlexImageInputs`). All returned features are L2-normalised float32.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.utils import cached_file

from ..configuration_fgclip2 import FGCLIP2Config
from ..modeling_fgclip import TEXT_KINDS, FGCLIPModel, TokenFeatures, check_boxes, roi_pool, value_path_tokens
from ..modeling_fgclip2 import FGCLIP2Model
from ..processing_fgclip import FGCLIPProcessor
from ..processing_fgclip2 import FGCLIP2Images, FGCLIP2Processor

MODEL_TYPES = ("auto", "fgclip", "fgclip2", "clip")
# A weight only FG-CLIP checkpoints have (upstream ones keep ``model_type: clip`` in config.json).
FGCLIP_MARKER_KEY = "text_model.embeddings.position_embedding_res.weight"


class SquareImageInputs:
    """Square ``(B, 3, S, S)`` image batches of an :class:`~fgclip.FGCLIPProcessor` (FG-CLIP, CLIP).

    Picklable: DataLoader workers call :meth:`prepare` per image, :meth:`collate` per batch.
    """

    def __init__(self, processor: FGCLIPProcessor):
        self.processor = processor

    def prepare(self, image, boxes: torch.Tensor | None, clamp: bool = True):
        """An RGB PIL image and optional (K, 4) xyxy boxes in its pixels -> (model input, boxes in input
        pixels, clamped to the input unless ``clamp`` is False)."""
        if boxes is None:
            return self.processor.preprocess(image)[0], None
        pixel_values, (mapped,) = self.processor.preprocess(image, boxes=[boxes])
        return pixel_values[0], mapped.clamp(0.0, float(pixel_values.shape[-1])) if clamp else mapped

    def collate(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)


class NaFlexImageInputs(SquareImageInputs):
    """:class:`~fgclip.FGCLIP2Images` batches of an :class:`~fgclip.FGCLIP2Processor` (aspect ratio kept)."""

    def prepare(self, image, boxes: torch.Tensor | None, clamp: bool = True):
        if boxes is None:
            return self.processor.preprocess(image), None
        batch, (mapped,) = self.processor.preprocess(image, boxes=[boxes])
        if not clamp:
            return batch, mapped
        patch = self.processor.image_processor.patch_size
        grid_h, grid_w = batch.spatial_shapes[0].tolist()
        extent = torch.tensor([grid_w, grid_h, grid_w, grid_h], dtype=torch.float32) * patch
        return batch, torch.minimum(mapped.clamp(min=0.0), extent)

    def collate(self, inputs: list[FGCLIP2Images]) -> FGCLIP2Images:
        return FGCLIP2Images.cat(inputs)


class EvalModel(ABC):
    """What the benchmarks need from a dual encoder: an image tower, region features and a
    text tower. Every method runs one backbone pass per image and returns L2-normalised
    float32 features.

    Attributes:
        processor: turns PIL images (and boxes in original pixels) into model inputs.
        device: where the inputs of the ``encode_*`` methods must live.
    """

    processor: FGCLIPProcessor
    device: torch.device

    @property
    def image_inputs(self) -> SquareImageInputs:
        """How images become batches (pickled into DataLoader workers); square inputs by default."""
        return SquareImageInputs(self.processor)

    @abstractmethod
    def encode_images(self, pixel_values) -> torch.Tensor:
        """An image batch of :attr:`image_inputs` ((B, 3, S, S) by default) -> (B, D) global embeddings."""

    @abstractmethod
    def encode_regions(self, pixel_values, boxes: list[torch.Tensor]) -> torch.Tensor:
        """An image batch and B (K_i, 4) xyxy boxes in input pixels -> (sum K_i, D) region embeddings."""

    @abstractmethod
    def encode_texts(self, texts: list[str], kind: str = "short") -> torch.Tensor:
        """(N, D) embeddings of ``texts`` for one text kind."""

    def dense_maps(self, pixel_values) -> list[torch.Tensor]:
        """Per image, its (h, w, D) L2-normalised patch embeddings (for similarity heatmaps)."""
        raise NotImplementedError(f"{type(self).__name__} gives no patch embeddings")

    def image_tokens(self, pixel_values) -> TokenFeatures:
        """Per-token image features for a cross-encoder re-ranker (:mod:`fgclip.rerank`)."""
        raise NotImplementedError(f"{type(self).__name__} gives no token features; re-ranking needs an FG-CLIP model")

    def text_tokens(self, texts: list[str], kind: str = "short") -> TokenFeatures:
        """Per-token text features for a cross-encoder re-ranker (:mod:`fgclip.rerank`)."""
        raise NotImplementedError(f"{type(self).__name__} gives no token features; re-ranking needs an FG-CLIP model")

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

    def image_tokens(self, pixel_values):
        return self.model.get_image_tokens(pixel_values)

    def dense_maps(self, pixel_values):
        return list(self.model.get_dense_features(pixel_values, normalize=True).float())

    def text_tokens(self, texts, kind="short"):
        kind = self.text_kind(kind)
        return self.model.get_text_tokens(self.processor.tokenize(texts, kind=kind).to(self.device), kind)


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
        checked = check_boxes(boxes, pixel_values.shape[0], *pixel_values.shape[-2:])
        dense = self._dense(pixel_values)
        return F.normalize(roi_pool(dense, checked, self.model.vision_model.config.patch_size).float(), dim=-1)

    def dense_maps(self, pixel_values):
        return list(F.normalize(self._dense(pixel_values).float(), dim=-1))

    def _dense(self, pixel_values) -> torch.Tensor:
        """(B, h, w, D) value-path patch embeddings, as FG-CLIP computes them."""
        vision = self.model.vision_model
        hidden = vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
        tokens = value_path_tokens(vision, self.model.visual_projection, hidden)
        patch = vision.config.patch_size
        grid_h, grid_w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        return tokens.reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[-1])

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


class FGCLIP2EvalModel(EvalModel):
    """:class:`EvalModel` over an :class:`~fgclip.FGCLIP2Model`; texts are padded to their kind's exact length."""

    def __init__(self, model: FGCLIP2Model, processor: FGCLIP2Processor):
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device

    @property
    def image_inputs(self) -> NaFlexImageInputs:
        return NaFlexImageInputs(self.processor)

    def encode_images(self, pixel_values: FGCLIP2Images):
        return F.normalize(self.model.get_image_features(**pixel_values.as_kwargs()).float(), dim=-1)

    def encode_regions(self, pixel_values: FGCLIP2Images, boxes):
        return F.normalize(self.model.get_region_features(**pixel_values.as_kwargs(), boxes=boxes).float(), dim=-1)

    def encode_texts(self, texts, kind="short"):
        kind = self.text_kind(kind)
        return F.normalize(self.model.get_text_features(**self._tokenize(texts, kind), kind=kind).float(), dim=-1)

    def image_tokens(self, pixel_values: FGCLIP2Images):
        return self.model.get_image_tokens(**pixel_values.as_kwargs())

    def dense_maps(self, pixel_values: FGCLIP2Images):
        output = self.model.encode_image(**pixel_values.as_kwargs(), normalize=True)
        return [dense.float() for dense in self.model.dense_maps(output.dense_features, pixel_values.spatial_shapes)]

    def text_tokens(self, texts, kind="short"):
        encoded = self._tokenize(texts, self.text_kind(kind))
        return self.model.get_text_tokens(encoded["input_ids"], kind, encoded["attention_mask"])

    def _tokenize(self, texts, kind):
        return {k: v.to(self.device) for k, v in self.processor.tokenize(texts, kind=kind).items()}


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


def config_model_type(path: str | os.PathLike) -> str | None:
    """``model_type`` of a checkpoint's ``config.json`` (a directory, or a hub id: fetched)."""
    if Path(path).is_dir():
        config_file = Path(path, "config.json")
        if not config_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json (expected a transformers checkpoint directory)")
    else:
        config_file = Path(cached_file(str(path), "config.json"))
    return json.loads(config_file.read_text()).get("model_type")


def detect_model_type(path: str | os.PathLike) -> str:
    """``"fgclip"``, ``"fgclip2"`` or ``"clip"`` for a checkpoint directory.

    ``model_type: fgclip`` / ``fgclip2`` in config.json means FG-CLIP / FG-CLIP 2;
    ``model_type: clip`` means FG-CLIP when the weights hold the long position table
    (upstream checkpoints), else plain CLIP.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: not a checkpoint directory")
    model_type = config_model_type(path)
    if model_type in ("fgclip", FGCLIP2Config.model_type):
        return model_type
    if model_type != "clip":
        raise ValueError(f"{Path(path, 'config.json')}: model_type {model_type!r} is not 'fgclip', 'fgclip2' or 'clip'")
    return "fgclip" if FGCLIP_MARKER_KEY in _checkpoint_keys(Path(path)) else "clip"


def load_eval_model(
    path: str | os.PathLike, model_type: str = "auto", device: str | torch.device = "cpu"
) -> EvalModel:
    """Load a checkpoint directory (or a hub id, with an explicit ``model_type``) as an
    :class:`EvalModel` on ``device``.

    Args:
        model_type: ``"fgclip"``, ``"fgclip2"``, ``"clip"`` (plain transformers CLIP, the
            baseline) or ``"auto"`` (see :func:`detect_model_type`).
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    if model_type == "auto":
        model_type = detect_model_type(path)
    device = torch.device(device)
    if model_type == "fgclip2":
        return FGCLIP2EvalModel(FGCLIP2Model.from_pretrained(path).to(device), FGCLIP2Processor.from_pretrained(path))
    processor = FGCLIPProcessor.from_pretrained(path)
    if model_type == "fgclip":
        return FGCLIPEvalModel(FGCLIPModel.from_pretrained(path).to(device), processor)
    return CLIPEvalModel(CLIPModel.from_pretrained(path).to(device), processor)
