"""LLaVA-1.5 with an FG-CLIP vision tower, on transformers' ``LlavaForConditionalGeneration``.

The tower is transformers' ``CLIPVisionModel`` (:mod:`mllm.tower`), so saved models reload with
plain ``LlavaForConditionalGeneration.from_pretrained``, without this package.
"""
from .builder import IMAGE_TOKEN, build_llava, build_processor, load_llava, prepare_tokenizer, save_llava
from .tower import vision_tower_from_fgclip

__all__ = [
    "IMAGE_TOKEN",
    "build_llava",
    "build_processor",
    "load_llava",
    "prepare_tokenizer",
    "save_llava",
    "vision_tower_from_fgclip",
]
