"""LLaVA-1.5 with an FG-CLIP vision tower, on transformers' ``LlavaForConditionalGeneration``.

Importing the package registers the tower with ``AutoConfig`` / ``AutoModel`` so that saved
models reload with ``LlavaForConditionalGeneration.from_pretrained``.
"""
from .builder import IMAGE_TOKEN, build_llava, build_processor, load_llava, prepare_tokenizer, save_llava
from .tower import FGCLIPVisionTower, FGCLIPVisionTowerConfig

__all__ = [
    "IMAGE_TOKEN",
    "FGCLIPVisionTower",
    "FGCLIPVisionTowerConfig",
    "build_llava",
    "build_processor",
    "load_llava",
    "prepare_tokenizer",
    "save_llava",
]
