"""Tiny random FG-CLIP configurations for tests and CPU smoke runs (no hub access needed)."""
from __future__ import annotations

from .configuration_fgclip import FGCLIPConfig


def tiny_config(
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    projection_dim: int = 16,
    **kwargs,
) -> FGCLIPConfig:
    """A few-thousand-parameter FG-CLIP with the real CLIP vocabulary and text lengths (77 / 248)."""
    common = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_attention_heads": 2,
              "num_hidden_layers": num_layers, "projection_dim": projection_dim}
    return FGCLIPConfig(
        text_config={**common, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**common, "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
        **kwargs,
    )
