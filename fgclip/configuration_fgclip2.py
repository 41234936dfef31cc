"""Configuration of FG-CLIP 2, the bilingual (English + Chinese) FG-CLIP on SigLIP 2.

The layout follows the upstream ``qihoo360/fg-clip2-*`` checkpoints: ``model_type`` ``fgclip2``
with a SigLIP 2 text config extended by ``keep_len`` / ``longtext_len`` (the long position
table: 196 = 4 * 64 - 3 * 20) and a SigLIP 2 NaFlex vision config, so an upstream
``config.json`` loads with no remote code.
"""
from __future__ import annotations

from transformers import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig

# Gemma tokenizer (SigLIP 2's multilingual vocabulary): <pad> 0, <eos> 1, <bos> 2.
GEMMA_VOCAB_SIZE = 256000
GEMMA_PAD, GEMMA_EOS, GEMMA_BOS = 0, 1, 2


class FGCLIP2TextConfig(Siglip2TextConfig):
    r"""SigLIP 2 text tower plus FG-CLIP 2's long position table.

    Args:
        keep_len (`int`, defaults to 20): leading rows of the short table the long one copies.
        longtext_len (`int`, defaults to 196): rows of the long table,
            ``keep_len + 4 * (max_position_embeddings - keep_len)``.
    """

    model_type = "fgclip2_text_model"
    keep_len: int = 20
    longtext_len: int = 196

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        short = self.max_position_embeddings
        if not 0 < self.keep_len < short - 1:
            raise ValueError(f"keep_len must lie in 1..{short - 2} for a {short}-row position table, got {self.keep_len}")
        stretch, remainder = divmod(self.longtext_len - self.keep_len, short - self.keep_len)
        if remainder or stretch < 1:
            raise ValueError(
                f"longtext_len must be keep_len + k * (max_position_embeddings - keep_len) for a whole k >= 1, "
                f"got {self.longtext_len} with keep_len {self.keep_len} and {short} short positions"
            )

    @property
    def long_position_stretch(self) -> int:
        """Long rows per remaining short row (4 for 64 -> 196)."""
        return (self.longtext_len - self.keep_len) // (self.max_position_embeddings - self.keep_len)


class FGCLIP2VisionConfig(Siglip2VisionConfig):
    """SigLIP 2 NaFlex vision tower (variable resolution, ``num_patches`` position grid)."""

    model_type = "fgclip2_vision_model"


class FGCLIP2Config(Siglip2Config):
    r"""Configuration of :class:`~fgclip.FGCLIP2Model`.

    ``text_config`` / ``vision_config`` as in :class:`transformers.Siglip2Config`, with the
    text config's ``keep_len`` and ``longtext_len``. Short and box texts take
    ``text_config.max_position_embeddings`` tokens (64), long texts ``longtext_len`` (196).

    Args:
        region_temperatures (`bool`, defaults to False): the model holds the training-only
            ``logit_scale_finegraind`` / ``logit_scale_hardneg`` (released checkpoints do not;
            ``FGCLIP2Model.from_pretrained`` sets it for a checkpoint that stores them, as the
            official training saves them without this flag).
    """

    model_type = "fgclip2"
    region_temperatures: bool = False
    sub_configs_defaults = {"vision_config": FGCLIP2VisionConfig, "text_config": FGCLIP2TextConfig}

    @property
    def short_text_length(self) -> int:
        return self.text_config.max_position_embeddings

    @property
    def long_text_length(self) -> int:
        return self.text_config.longtext_len

    @classmethod
    def _preset(cls, hidden: int, intermediate: int, layers: int, heads: int, **kwargs) -> "FGCLIP2Config":
        tower = {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                 "num_attention_heads": heads}
        text = {**tower, "vocab_size": GEMMA_VOCAB_SIZE, "pad_token_id": GEMMA_PAD, "eos_token_id": GEMMA_EOS,
                "bos_token_id": GEMMA_BOS}
        return cls(text_config=text, vision_config={**tower, "patch_size": 16, "num_patches": 256}, **kwargs)

    @classmethod
    def base(cls, **kwargs) -> "FGCLIP2Config":
        """ViT-B/16 towers (``qihoo360/fg-clip2-base``, from ``google/siglip2-base-patch16-naflex``)."""
        return cls._preset(768, 3072, 12, 12, **kwargs)

    @classmethod
    def large(cls, **kwargs) -> "FGCLIP2Config":
        """ViT-L/16 towers (``qihoo360/fg-clip2-large``)."""
        return cls._preset(1024, 4096, 24, 16, **kwargs)

    @classmethod
    def so400m(cls, **kwargs) -> "FGCLIP2Config":
        """So400m/16 towers (``qihoo360/fg-clip2-so400m``, from ``google/siglip2-so400m-patch16-naflex``)."""
        return cls._preset(1152, 4304, 27, 16, **kwargs)

    @classmethod
    def tiny(
        cls, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 64, patch_size: int = 4
    ) -> "FGCLIP2Config":
        """A tiny FG-CLIP 2 with the real text lengths (64 short, 196 long, keep 20) and a 4x4 position grid,
        for tests and CPU smoke runs (the trainer's ``tiny`` preset)."""
        tower = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_attention_heads": 2,
                 "num_hidden_layers": num_layers}
        return cls(
            text_config={**tower, "vocab_size": vocab_size, "pad_token_id": GEMMA_PAD, "eos_token_id": GEMMA_EOS,
                         "bos_token_id": GEMMA_BOS},
            vision_config={**tower, "patch_size": patch_size, "num_patches": 16},
        )
