"""FG-CLIP's vision encoder as the vision tower of transformers' ``LlavaForConditionalGeneration``.

FG-CLIP's ViT is a CLIP ViT under CLIP's parameter names (embeddings, pre-LN, encoder, post-LN),
so the tower is transformers' own ``CLIPVisionModel`` with a ``clip_vision_model`` config: a saved
LLaVA directory then opens in plain transformers, lmms-eval's ``llava_hf``, VLMEvalKit or a serving
engine without this package. ``LlavaModel.get_image_features`` calls the tower with
``output_hidden_states`` and takes ``hidden_states[vision_feature_layer]`` (index 0 is the input of
the first block); with ``vision_feature_layer=-2`` and ``vision_feature_select_strategy="default"``
LLaVA reads the penultimate layer without CLS: 576 patch tokens for ViT-L/14 at 336 px, the
features of LLaVA-1.5.

Directories written before 0.2.0 name the tower's config type ``fgclip_vision_tower``;
:func:`clip_vision_config_dict` reads them as ``clip_vision_model`` (same fields and weights).
"""
from __future__ import annotations

import os

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from fgclip import FGCLIPConfig, FGCLIPModel

LEGACY_TOWER_TYPE = "fgclip_vision_tower"
# Config fields that describe the serialisation, not the architecture, and the legacy provenance field.
_NON_ARCHITECTURE_KEYS = ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype",
                          "source_checkpoint")


def clip_vision_config_dict(vision: dict) -> dict:
    """The architecture fields of a vision config (FG-CLIP's, or a legacy ``fgclip_vision_tower``
    one) as a ``clip_vision_model`` config dict."""
    return {**{key: value for key, value in vision.items() if key not in _NON_ARCHITECTURE_KEYS},
            "model_type": CLIPVisionConfig.model_type}


def vision_tower_config(config: FGCLIPConfig) -> CLIPVisionConfig:
    """The vision half of an FG-CLIP configuration as a ``CLIPVisionConfig``."""
    fields = clip_vision_config_dict(config.vision_config.to_dict())
    fields.pop("model_type")
    return CLIPVisionConfig(**fields)


def vision_tower_from_fgclip(checkpoint: str | os.PathLike | FGCLIPModel,
                             dtype: torch.dtype | None = None) -> CLIPVisionModel:
    """The vision encoder of an FG-CLIP model or checkpoint directory as a ``CLIPVisionModel``.

    Our checkpoints and upstream ones (plain CLIP ``config.json``) are read through
    :meth:`fgclip.FGCLIPModel.from_pretrained`; the vision weights are copied strictly.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = FGCLIPModel.from_pretrained(checkpoint)
    tower = CLIPVisionModel(vision_tower_config(checkpoint.config))
    tower.load_state_dict(checkpoint.vision_model.state_dict(), strict=True)
    return tower.to(dtype) if dtype is not None else tower


def patch_tokens(config: CLIPVisionConfig) -> int:
    """Patch tokens per image, (S/p)^2 (CLS not counted)."""
    return (config.image_size // config.patch_size) ** 2
