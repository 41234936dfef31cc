"""Test helpers (not imported by library code): the tiny FG-CLIP / FG-CLIP 2 configurations under their
test names (:meth:`FGCLIPConfig.tiny`, :meth:`FGCLIP2Config.tiny`) and a word-level tokenizer for tests
and CPU smoke runs (no hub access needed)."""
from __future__ import annotations

from .configuration_fgclip import FGCLIPConfig
from .configuration_fgclip2 import FGCLIP2Config

tiny_config = FGCLIPConfig.tiny
tiny_fgclip2_config = FGCLIP2Config.tiny


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
