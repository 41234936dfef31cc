"""Tiny stand-ins for tests and CPU smoke runs: a Llama LM, an FG-CLIP checkpoint and a
LLaVA-style conversation set with generated images, all written to local directories."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.testing import tiny_config

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def tiny_llama_tokenizer() -> LlamaTokenizer:
    """Character-level Llama tokenizer over ASCII letters, digits, punctuation and newline.

    Every token decodes to a distinct character, so equal decoded texts mean equal tokens.
    ``legacy=False`` is written to its saved config, as Vicuna-v1.5's config has it.
    """
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for symbol in ["▁", "\n", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(symbol, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True, legacy=False)
    tokenizer.init_kwargs["legacy"] = False  # save_pretrained writes init_kwargs, not the attribute
    return tokenizer


def save_tiny_llama(directory: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Llama and its tokenizer, saved like a hub checkpoint."""
    directory = Path(directory)
    tokenizer = tiny_llama_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        initializer_range=0.5,  # large random weights: outputs depend on the whole prompt
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_fgclip(directory: str | Path, seed: int = 0) -> Path:
    """A random tiny FG-CLIP (32 px images, 8 px patches: 16 patch tokens) and its processor."""
    directory = Path(directory)
    torch.manual_seed(seed)
    config = tiny_config()
    FGCLIPModel(config).save_pretrained(directory)
    FGCLIPProcessor.for_config(config).save_pretrained(directory)
    return directory


def write_shape_images(directory: str | Path, count: int = 4) -> list[str]:
    """``count`` small non-square images, each a coloured square on grey; returns file names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        color_name = list(COLORS)[index % len(COLORS)]
        image = Image.new("RGB", (48 + 8 * index, 40), (128, 128, 128))
        ImageDraw.Draw(image).rectangle([8, 8, 30, 30], fill=COLORS[color_name])
        name = f"{index:03d}_{color_name}.png"
        image.save(directory / name)
        names.append(name)
    return names


def write_conversations(directory: str | Path, count: int = 4) -> tuple[Path, Path]:
    """Images plus a pretrain set (LCS-558K style) and a finetune set (mix665k style, one text-only record).

    Returns:
        ``(pretrain_json, finetune_json)``; image paths in them are relative to ``directory / "images"``.
    """
    directory = Path(directory)
    names = write_shape_images(directory / "images", count)
    pretrain, finetune = [], []
    for index, name in enumerate(names):
        color = name.split("_")[1].split(".")[0]
        pretrain.append({
            "id": f"lcs-{index}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "Give a brief description of the image.\n<image>"},
                {"from": "gpt", "value": f"a {color} square on grey"},
            ],
        })
        finetune.append({
            "id": f"mix-{index}",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat color is the square?"},
                {"from": "gpt", "value": color},
                {"from": "human", "value": "Is there a circle?"},
                {"from": "gpt", "value": "No"},
            ],
        })
    finetune.append({
        "id": "text-0",
        "conversations": [
            {"from": "human", "value": "Say hello."},
            {"from": "gpt", "value": "Hello!"},
        ],
    })
    pretrain_json, finetune_json = directory / "pretrain.json", directory / "finetune.json"
    pretrain_json.write_text(json.dumps(pretrain, indent=1))
    finetune_json.write_text(json.dumps(finetune, indent=1))
    return pretrain_json, finetune_json
