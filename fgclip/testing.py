"""Tiny random FG-CLIP / FG-CLIP 2 configurations and a word-level tokenizer for tests and CPU smoke runs
(no hub access needed)."""
from __future__ import annotations

from .configuration_fgclip import FGCLIPConfig
from .configuration_fgclip2 import GEMMA_BOS, GEMMA_EOS, GEMMA_PAD, FGCLIP2Config


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


def tiny_fgclip2_config(
    hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 64, patch_size: int = 4
) -> FGCLIP2Config:
    """A tiny FG-CLIP 2 with the real text lengths (64 short, 196 long, keep 20) and a 4x4 position grid."""
    tower = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_attention_heads": 2,
             "num_hidden_layers": num_layers}
    return FGCLIP2Config(
        text_config={**tower, "vocab_size": vocab_size, "pad_token_id": GEMMA_PAD, "eos_token_id": GEMMA_EOS,
                     "bos_token_id": GEMMA_BOS},
        vision_config={**tower, "patch_size": patch_size, "num_patches": 16},
    )


def tiny_word_tokenizer(words: list[str]):
    """A lower-case word-level fast tokenizer with Gemma's special ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3).

    Texts become ``<bos> words... <eos>``; stands in for the released Gemma tokenizer offline.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")
