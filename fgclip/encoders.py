"""One encoder interface over every model family: loading by type detection, and an :class:`Encoder`
that evaluation, re-ranking, the CLI, class-embedding dumps, the detection backbone and the trainer
use without knowing which family they hold.

The families share one model API (``get_image_features`` / ``get_text_features`` /
``get_region_features`` / ``get_dense_features`` / ``encode_image`` / ``vision_hidden_states`` /
``forward``, all taking a processor ``BatchFeature`` as ``**batch``) and one processor call
(``processor(images=..., text=..., boxes=..., text_kind=...)``). Which families exist is the
registry's business (:mod:`fgclip.families`); nothing here names one.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.utils import cached_file

from .checkpoint_files import check_checkpoint_files, read_json_object, refused_pickle
from .errors import CheckpointError, ConfigError
from .families import FAMILIES, Family, family_of_checkpoint, get_family
from .modeling_common import TokenFeatures, check_text_kind
from .processing_common import concat_image_batches


def family_of(model) -> Family:
    """The (first registered) family whose model class ``model`` is an instance of."""
    for family in FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    raise TypeError(f"{type(model).__name__} is not a model of a known family ({', '.join(FAMILIES)})")


def prepare_images(processor, images: list, boxes: list[torch.Tensor] | None = None) -> BatchFeature:
    """PIL images (and (K_i, 4) xyxy boxes in their pixels) -> a model batch on the CPU; boxes are
    clamped to their image first, then mapped into the model input.

    Each image goes through the processor on its own, as the official evaluation scripts process
    one image at a time, so no image's features depend on the others of its batch (FG-CLIP 2's
    processor would otherwise give every image of a call the largest patch budget among them).
    Needs only the (picklable) processor, so DataLoader workers call it.
    """
    if boxes is None:
        return concat_image_batches([processor(images=[image]) for image in images])
    clamped = [torch.stack([b[:, 0].clamp(0, image.width), b[:, 1].clamp(0, image.height),
                            b[:, 2].clamp(0, image.width), b[:, 3].clamp(0, image.height)], dim=1)
               for image, b in zip(images, boxes)]
    return concat_image_batches([processor(images=[image], boxes=[b]) for image, b in zip(images, clamped)])


class Encoder:
    """A model and its processor behind one family-blind interface. Every ``encode_*`` method runs one
    backbone pass per image and returns L2-normalised float32 features.

    Image batches are processor ``BatchFeature`` s (:meth:`prepare_images`), built per batch (in
    DataLoader workers: the encoder pickles) and joined with :func:`concat_image_batches`.

    Args:
        long_text_kind: the text path long texts take (``"short"`` for a plain CLIP baseline).
    """

    def __init__(self, model, processor, long_text_kind: str = "long"):
        self.model = model.eval()
        self.processor = processor
        self.long_text_kind = check_text_kind(long_text_kind)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def text_kind(self, kind: str) -> str:
        """The text path ``kind`` actually uses (texts embedded the same way share a cache)."""
        return self.long_text_kind if check_text_kind(kind) == "long" else kind

    # ------------------------------------------------------------------ images
    def prepare_images(self, images: list, boxes: list[torch.Tensor] | None = None) -> BatchFeature:
        """See :func:`prepare_images`."""
        return prepare_images(self.processor, images, boxes)

    def encode_images(self, batch) -> torch.Tensor:
        """A model batch -> (B, D) global embeddings."""
        return F.normalize(self.model.get_image_features(**batch).float(), dim=-1)

    def encode_regions(self, batch) -> torch.Tensor:
        """A model batch with ``boxes`` -> (sum K_i, D) region embeddings (no global embedding is computed)."""
        return F.normalize(self.model.get_region_features(**batch).float(), dim=-1)

    def dense_maps(self, batch) -> list[torch.Tensor]:
        """Per image, its (h, w, D) L2-normalised patch embeddings (for similarity heatmaps)."""
        output = self.model.encode_image(**batch, dense=True, image_embeds=False, normalize=True)
        return [dense.float() for dense in self.model.dense_maps(output)]

    def image_tokens(self, batch) -> TokenFeatures:
        """Per-token image features for a cross-encoder re-ranker (:mod:`fgclip.rerank`)."""
        return self.model.get_image_tokens(**batch)

    def vision_hidden_states(self, batch, layers: Sequence[int]) -> list[torch.Tensor]:
        """Patch tokens after the blocks ``layers`` (see the model's ``vision_hidden_states``)."""
        return self.model.vision_hidden_states(**batch, layers=layers)

    # ------------------------------------------------------------------ texts
    def encode_texts(self, texts: list[str], kind: str = "short") -> torch.Tensor:
        """(N, D) embeddings of ``texts`` for one text kind, padded as little as the family allows."""
        path = self.text_kind(kind)
        batch = self.processor(text=texts, text_kind=path, padding=self.processor.minimal_padding)
        return F.normalize(self.model.get_text_features(**batch.to(self.device)).float(), dim=-1)

    def text_tokens(self, texts: list[str], kind: str = "short") -> TokenFeatures:
        """Per-token text features for a cross-encoder re-ranker (:mod:`fgclip.rerank`)."""
        path = self.text_kind(kind)
        batch = self.processor(text=texts, text_kind=path).to(self.device)
        return self.model.get_text_tokens(batch["input_ids"], batch["attention_mask"], path)


# ---------------------------------------------------------------------------------- loading
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; a bare ``cuda`` under torchrun -> ``cuda:LOCAL_RANK``.
    A device this machine does not have is a :class:`ConfigError` naming ``--device``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name}: not a device name ({error}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA GPU"
        raise ConfigError(f"--device {name}: this machine has {found} (use --device cpu, or auto)")
    return device


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "name" or "owner/name"


def locate_config(path: str | os.PathLike) -> Path:
    """``config.json`` of a checkpoint directory, or of a hub id (fetched). A path that is not a
    directory is reported as a missing directory unless it reads as a hub id (``owner/name``)."""
    if Path(path).is_dir():
        config_file = Path(path, "config.json")
        if not config_file.is_file():
            raise CheckpointError(path, "no config.json (expected a transformers checkpoint directory)")
        return config_file
    if Path(path).exists():
        raise CheckpointError(path, "not a directory (a checkpoint is a directory holding config.json)")
    if not HUB_ID.match(str(path)) or ".." in str(path):
        raise CheckpointError(path, "checkpoint directory not found")
    try:
        return Path(cached_file(str(path), "config.json"))
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(path, "not a local directory, and no hub checkpoint could be fetched "
                                    f"({reason})") from None


def config_model_type(path: str | os.PathLike) -> str | None:
    """``model_type`` of a checkpoint's ``config.json`` (a directory, or a hub id: fetched)."""
    return read_json_object(locate_config(path)).get("model_type")


def detect_model_type(path: str | os.PathLike) -> str:
    """The family name of a checkpoint directory or hub id, from its ``config.json`` ``model_type``
    (:func:`fgclip.families.family_of_checkpoint`): ``model_type: clip`` is FG-CLIP when the weights
    hold the long position table (upstream checkpoints; a hub id is taken as one), else plain CLIP."""
    model_type = config_model_type(path)
    family = family_of_checkpoint(model_type, path)
    if family is None:
        claimed = sorted({name for family in FAMILIES.values() for name in family.model_types})
        raise CheckpointError(Path(path, "config.json") if Path(path).is_dir() else path,
                              f"model_type {model_type!r} is not one of {', '.join(claimed)}")
    return family.name


def checkpoint_family(path: str | os.PathLike, model_type: str = "auto") -> Family:
    """The family of ``model_type`` (a family name, or ``"auto"``: :func:`detect_model_type`)."""
    if model_type != "auto":
        return get_family(model_type, "model type")
    return FAMILIES[detect_model_type(path)]


def load_model(path: str | os.PathLike, model_type: str = "auto", **kwargs):
    """A model of any family from a checkpoint directory or hub id (``kwargs`` go to its loader)."""
    family = checkpoint_family(path, model_type)
    if Path(path).is_dir():
        check_checkpoint_files(path)
    try:
        return family.load_model(path, **kwargs)
    except pickle.UnpicklingError as error:
        pickled = sorted(Path(path).glob("*.bin")) if Path(path).is_dir() else []
        raise refused_pickle(pickled[0] if len(pickled) == 1 else path, error) from None


def processor_for(model, path: str | os.PathLike | None = None, tokenizer=None, family: Family | None = None,
                  **options):
    """The processor of ``model`` (of ``family``, by default the family of its class): the one saved with
    checkpoint ``path``, or one built for its config (with ``tokenizer``, which FG-CLIP 2 needs)."""
    processor_class = (family or family_of(model)).processor_class
    if path is not None:
        return processor_class.from_pretrained(path, **options)
    return processor_class.for_config(model.config, tokenizer=tokenizer, **options)


def load_encoder(path: str | os.PathLike, model_type: str = "auto", device: str | torch.device = "cpu") -> Encoder:
    """Load a checkpoint directory or hub id as an :class:`Encoder` on ``device``.

    Args:
        model_type: a family name (:data:`fgclip.families.FAMILIES`, e.g. ``"fgclip"``, ``"fgclip2"``,
            ``"clip"``: a plain transformers CLIP as the baseline) or ``"auto"`` (:func:`detect_model_type`).
    """
    family = checkpoint_family(path, model_type)
    model = load_model(path, family.name).to(torch.device(device))
    return Encoder(model, processor_for(model, path, family=family), long_text_kind=family.long_text_kind)


__all__ = [
    "Encoder",
    "checkpoint_family",
    "concat_image_batches",
    "detect_model_type",
    "family_of",
    "load_encoder",
    "load_model",
    "prepare_images",
    "processor_for",
    "resolve_device",
]
