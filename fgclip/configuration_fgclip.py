"""Configuration of FG-CLIP: a standard CLIP configuration plus the long-text geometry.

An upstream FG-CLIP checkpoint ships a plain CLIP ``config.json`` (``model_type: clip``);
:class:`FGCLIPConfig` reads it unchanged and fills the FG-CLIP fields with their defaults.
"""
from __future__ import annotations

from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

# CLIP BPE special tokens (vocabulary of 49408).
CLIP_BOS_TOKEN_ID = 49406
CLIP_EOS_TOKEN_ID = 49407


class FGCLIPConfig(CLIPConfig):
    r"""Configuration of :class:`~fgclip.FGCLIPModel`.

    Args:
        text_config, vision_config, projection_dim, logit_scale_init_value:
            as in :class:`transformers.CLIPConfig`. The short-text length is the text
            config's ``max_position_embeddings`` (77 for CLIP).
        long_keep_positions (`int`, defaults to 20):
            how many leading rows of the short position table the long table copies as they are.
        long_position_stretch (`int`, defaults to 4):
            how many long positions each remaining short position is stretched into.
            The long length is ``keep + stretch * (short - keep)``: 20 + 4 * 57 = 248.
    """

    model_type = "fgclip"

    def __init__(
        self,
        text_config: dict | CLIPTextConfig | None = None,
        vision_config: dict | CLIPVisionConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 2.6592,
        long_keep_positions: int = 20,
        long_position_stretch: int = 4,
        **kwargs,
    ):
        if text_config is None or isinstance(text_config, dict):
            text_config = {"bos_token_id": CLIP_BOS_TOKEN_ID, "eos_token_id": CLIP_EOS_TOKEN_ID,
                           "pad_token_id": CLIP_EOS_TOKEN_ID, **(text_config or {})}
        super().__init__(
            text_config=text_config,
            vision_config=vision_config,
            projection_dim=projection_dim,
            logit_scale_init_value=logit_scale_init_value,
            **kwargs,
        )
        short = self.text_config.max_position_embeddings
        if not 0 < long_keep_positions < short - 1:
            raise ValueError(
                f"long_keep_positions must lie in 1..{short - 2} for a {short}-row position table, "
                f"got {long_keep_positions}"
            )
        if long_position_stretch < 1:
            raise ValueError(f"long_position_stretch must be >= 1, got {long_position_stretch}")
        self.long_keep_positions = long_keep_positions
        self.long_position_stretch = long_position_stretch

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FGCLIPConfig":
        """Load our own config or an upstream checkpoint's plain CLIP ``config.json``."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "clip":
            config_dict = {**config_dict, "model_type": cls.model_type}
        return cls.from_dict(config_dict, **kwargs)

    @property
    def short_text_length(self) -> int:
        """Token length of short, region and hard-negative texts (77 for CLIP)."""
        return self.text_config.max_position_embeddings

    @property
    def long_text_length(self) -> int:
        """Token length of long captions (248 for CLIP's 77)."""
        keep = self.long_keep_positions
        return keep + self.long_position_stretch * (self.short_text_length - keep)

    @classmethod
    def vit_b16(cls) -> "FGCLIPConfig":
        """ViT-B/16 at 224 px, projection 512 (``qihoo360/fg-clip-base``)."""
        return cls(
            text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                         "num_hidden_layers": 12, "projection_dim": 512},
            vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                           "num_hidden_layers": 12, "image_size": 224, "patch_size": 16,
                           "projection_dim": 512},
            projection_dim=512,
        )

    @classmethod
    def vit_l14_336(cls) -> "FGCLIPConfig":
        """ViT-L/14 at 336 px, projection 768 (``qihoo360/fg-clip-large``)."""
        return cls(
            text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                         "num_hidden_layers": 12, "projection_dim": 768},
            vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                           "num_hidden_layers": 24, "image_size": 336, "patch_size": 14,
                           "projection_dim": 768},
            projection_dim=768,
        )

    @classmethod
    def tiny(cls, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2,
             projection_dim: int = 16, **kwargs) -> "FGCLIPConfig":
        """A few-thousand-parameter FG-CLIP with the real CLIP vocabulary and text lengths (77 / 248),
        for tests and CPU smoke runs (the trainer's ``tiny`` preset)."""
        common = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_attention_heads": 2,
                  "num_hidden_layers": num_layers, "projection_dim": projection_dim}
        return cls(
            text_config={**common, "vocab_size": 49408, "max_position_embeddings": 77},
            vision_config={**common, "image_size": image_size, "patch_size": patch_size},
            projection_dim=projection_dim,
            **kwargs,
        )
