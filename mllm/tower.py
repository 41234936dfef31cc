"""FG-CLIP's vision encoder as the vision tower of transformers' ``LlavaForConditionalGeneration``.

``LlavaModel.get_image_features`` calls its tower as
``vision_tower(pixel_values, return_dict=True, output_hidden_states=config.vision_feature_layer)``,
takes ``hidden_states[vision_feature_layer]`` and, with ``vision_feature_select_strategy="default"``,
drops the first (CLS) token. The tower is therefore transformers' ``CLIPVisionModel`` (which
records per-layer hidden states, the input of layer 0 first) under its own registered
config type, so that a saved LLaVA names it and reloads it without the FG-CLIP checkpoint.
With ``vision_feature_layer=-2`` LLaVA reads the penultimate layer: 576 patch tokens for
ViT-L/14 at 336 px, the features of LLaVA-1.5.
"""
from __future__ import annotations

import os

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel

from fgclip import FGCLIPConfig, FGCLIPModel

# Config fields that describe the serialisation, not the architecture.
_NON_ARCHITECTURE_KEYS = ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype")


@strict
class FGCLIPVisionTowerConfig(CLIPVisionConfig):
    """A ``CLIPVisionConfig`` under the model type ``fgclip_vision_tower``.

    Args:
        source_checkpoint (`str`, *optional*): the FG-CLIP checkpoint the weights came from
            (recorded for provenance only; reloading never reads it).
        Other arguments: as in :class:`transformers.CLIPVisionConfig`.
    """

    model_type = "fgclip_vision_tower"

    source_checkpoint: str | None = None

    @classmethod
    def from_fgclip_config(
        cls, config: FGCLIPConfig, source_checkpoint: str | None = None
    ) -> "FGCLIPVisionTowerConfig":
        """The vision half of an FG-CLIP configuration."""
        vision = {k: v for k, v in config.vision_config.to_dict().items() if k not in _NON_ARCHITECTURE_KEYS}
        return cls(source_checkpoint=source_checkpoint, **vision)


class FGCLIPVisionTower(CLIPVisionModel):
    """FG-CLIP's ViT (embeddings, pre-LN, encoder, post-LN) with CLIP's parameter names.

    Its forward is ``CLIPVisionModel.forward``: ``pixel_values`` (B, 3, S, S) ->
    ``BaseModelOutputWithPooling`` whose ``hidden_states`` (when requested) hold
    ``num_hidden_layers + 1`` tensors of shape (B, 1 + (S/p)^2, C), index 0 being the input of
    the first block.
    """

    config_class = FGCLIPVisionTowerConfig
    config: FGCLIPVisionTowerConfig

    @classmethod
    def from_fgclip(
        cls, checkpoint: str | os.PathLike | FGCLIPModel, dtype: torch.dtype | None = None
    ) -> "FGCLIPVisionTower":
        """Take the vision encoder of an FG-CLIP model or checkpoint directory.

        Both our checkpoints and upstream ones (plain CLIP ``config.json``) are read through
        :meth:`fgclip.FGCLIPModel.from_pretrained`; the vision weights are copied strictly.
        """
        source = None
        if isinstance(checkpoint, (str, os.PathLike)):
            source = str(checkpoint)
            checkpoint = FGCLIPModel.from_pretrained(checkpoint)
        config = FGCLIPVisionTowerConfig.from_fgclip_config(checkpoint.config, source_checkpoint=source)
        tower = cls(config)
        tower.load_state_dict(checkpoint.vision_model.state_dict(), strict=True)
        return tower.to(dtype) if dtype is not None else tower

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image, (S/p)^2 (CLS not counted)."""
        return (self.config.image_size // self.config.patch_size) ** 2


AutoConfig.register(FGCLIPVisionTowerConfig.model_type, FGCLIPVisionTowerConfig)
AutoModel.register(FGCLIPVisionTowerConfig, FGCLIPVisionTower)
