"""LLaVA-1.5 with an FG-CLIP vision tower, on transformers' ``LlavaForConditionalGeneration``.

The tower is transformers' ``CLIPVisionModel`` (:mod:`mllm.tower`), so saved models reload with
plain ``LlavaForConditionalGeneration.from_pretrained``, without this package. Names are imported
on first use, so ``python -m mllm.builder`` / ``mllm.train`` run their module only once.
"""
from __future__ import annotations

from fgclip.lazy import lazy_exports

_EXPORTS = {
    "IMAGE_TOKEN": "builder",
    "LanguageModelLoss": "builder",
    "build_llava": "builder",
    "build_processor": "builder",
    "load_llava": "builder",
    "load_projector": "builder",
    "prepare_tokenizer": "builder",
    "save_llava": "builder",
    "vision_tower_from_fgclip": "tower",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
