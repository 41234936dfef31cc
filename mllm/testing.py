"""Tiny stand-ins for tests and CPU smoke runs: a Llama LM, an FG-CLIP checkpoint and a
LLaVA-style conversation set with generated images, all written to local directories; and a tiny
LLaVA whose every weight is a fixed function of its name (:func:`fill_from_names`), for values
recorded from other code bases."""
from __future__ import annotations

import json
import shutil
import string
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

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


def values_from_name(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Float32 values that depend only on ``name``, ``shape`` and ``seed``: normal draws of numpy's
    legacy ``RandomState`` (whose streams numpy keeps fixed across versions) seeded with
    crc32(name) + seed, scaled per kind: biases by 0.1, other 1-D weights as 1 + 0.1 x, token and
    position tables unit normal, other matrices by 2 / sqrt(fan in)."""
    state = np.random.RandomState((zlib.crc32(name.encode()) + seed) % 2**32)
    values = torch.from_numpy(state.standard_normal(tuple(shape)).astype(np.float32))
    if name.endswith("bias"):
        return 0.1 * values
    if len(shape) == 1:
        return 1 + 0.1 * values
    if name.endswith(("embed_tokens.weight", "position_embedding.weight")):
        return values
    return values * (2.0 / float(np.sqrt(np.prod(shape[1:]))))


def fill_from_names(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter of ``module`` with :func:`values_from_name` of its name: the same
    names give bit-identical weights on any machine, whatever the torch or transformers version
    and whatever ran before."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(values_from_name(name, tuple(parameter.shape), seed).to(parameter.dtype))
    return module


def save_reference_llama(directory: str | Path, tokenizer_directory: str | Path) -> Path:
    """A 2-layer, 32-wide Llama (grouped-query attention) with the tokenizer files of
    ``tokenizer_directory`` copied as they are (e.g. a sentencepiece ``tokenizer.model``, as
    Vicuna ships it), weights from :func:`fill_from_names`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in Path(tokenizer_directory).iterdir():
        if path.is_file():
            shutil.copyfile(path, directory / path.name)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.unk_token_id,
        tie_word_embeddings=False,
    )
    fill_from_names(LlamaForCausalLM(config)).save_pretrained(directory)
    return directory


def build_reference_llava(root: str | Path, tokenizer_directory: str | Path):
    """A tiny LLaVA-1.5 (tiny FG-CLIP tower, :func:`save_reference_llama`) with every weight from
    :func:`fill_from_names` under Llava's names and the ``<image>`` rows zero, as
    :func:`mllm.build_llava` leaves them. Returns ``(model, processor)``."""
    from .builder import build_llava, zero_added_rows

    root = Path(root)
    language_model = save_reference_llama(root / "reference-lm", tokenizer_directory)
    tower = save_tiny_fgclip(root / "reference-fgclip")
    model, processor = build_llava(language_model, tower)
    fill_from_names(model)
    zero_added_rows(model)
    return model.eval(), processor


def save_reference_language_model(model, directory: str | Path, tokenizer_directory: str | Path) -> Path:
    """The language model of a Llava built by :func:`build_reference_llava`, without the ``<image>``
    row, as a plain ``LlamaForCausalLM`` directory with the tokenizer files of ``tokenizer_directory``
    (what LLaVA's LoRA and stage-1 checkpoints name as their ``model_base``)."""
    from .builder import language_model_columns

    directory = Path(directory)
    columns = language_model_columns(model)
    config = LlamaConfig.from_dict({**model.config.text_config.to_dict(), "vocab_size": columns})
    language_model = LlamaForCausalLM(config)
    weights = {"model." + name: tensor for name, tensor in model.model.language_model.state_dict().items()}
    weights["lm_head.weight"] = model.lm_head.weight
    weights = {name: tensor[:columns] if name in ("model.embed_tokens.weight", "lm_head.weight") else tensor
               for name, tensor in weights.items()}
    language_model.load_state_dict(weights, strict=True)
    language_model.save_pretrained(directory)
    for path in Path(tokenizer_directory).iterdir():
        if path.is_file():
            shutil.copyfile(path, directory / path.name)
    return directory


def reference_image():
    """A 32 x 24 RGB image whose pixels are a fixed function of their position; padded to a square it
    is 32 x 32, the tiny tower's size, so no resize filter touches it."""
    rows, columns = np.meshgrid(np.arange(24), np.arange(32), indexing="ij")
    channels = [(rows * 7 + columns * 13 + offset) % 256 for offset in (0, 85, 170)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), "RGB")


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
