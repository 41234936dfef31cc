"""LLaVA-1.5 checkpoints in the official layout (haotian-liu/LLaVA) in and out of ours.

    python -m mllm.convert to-llava SRC DST [--tokenizer LM_DIR] [--mm-vision-tower VALUE]
    python -m mllm.convert from-llava SRC DST [--model-base LM_DIR] [--vision-tower TOWER] [--dtype ...]

``to-llava`` writes, from a directory of ours (:func:`mllm.save_llava`, ``mllm.train``,
``mllm.merge_lora``), the directory ``llava.model.builder.load_pretrained_model`` opens:

* ``config.json``: ``LlavaLlamaForCausalLM`` (``model_type: llava_llama``), the Llama fields
  (``rope_theta`` and ``rope_scaling`` as transformers 4.37 reads them) and LLaVA's
  ``mm_vision_tower``, ``mm_hidden_size``, ``mm_projector_type: mlp2x_gelu``,
  ``mm_vision_select_layer``, ``mm_vision_select_feature``, ``mm_patch_merge_type: flat``,
  ``mm_use_im_start_end: false``, ``mm_use_im_patch_token: false`` (LLaVA's loader adds an
  ``<im_patch>`` token when this field is absent), ``image_aspect_ratio`` (``pad`` when the
  processor pads);
* weights ``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``,
  ``model.mm_projector.{0,2}.*`` and, as LLaVA's own saves hold them, the tower under
  ``model.vision_tower.vision_tower.*``; the language model's vocabulary only (LLaVA has no
  ``<image>`` row: it splices images in at id -200);
* ``vision_tower/``: the tower as a CLIP vision checkpoint with a ``CLIPImageProcessor``
  config, named by ``mm_vision_tower`` (LLaVA's loader reads the tower from there and
  ignores the tower weights of the main checkpoint);
* the tokenizer as LLaVA's slow ``LlamaTokenizer`` reads it: ``tokenizer.model`` (sentencepiece)
  and a ``tokenizer_config.json`` that keeps ``legacy``.

LLaVA's scripts name a model by the last component of its path
(``llava.mm_utils.get_model_name_from_path``) and ``load_pretrained_model`` treats it as LLaVA
only if that name contains ``llava``; a name with ``lora`` asks for a LoRA base, one with
``mpt`` or ``mistral`` for another class. ``to-llava`` therefore refuses a ``DST`` whose name
breaks these rules.

``from-llava`` reads, into our layout (:func:`mllm.save_llava`):

* a full checkpoint (a released LLaVA-1.5 or a ``to-llava`` output);
* a LoRA checkpoint as LLaVA's ``train.py`` saves it (``adapter_config.json``, the adapter,
  ``non_lora_trainables.bin``, ``config.json``) with ``--model-base`` the language model it was
  trained from: the projector and any other tensors of ``non_lora_trainables.bin`` replace the
  base's, then each adapted weight gets ``alpha / r * B A`` (what LLaVA's loader does with peft's
  ``merge_and_unload``);
* a stage-1 output (``mm_projector.bin`` and ``config.json``, or the ``mm_projector.bin`` file
  alone) with ``--model-base``.

The tower is read from ``mm_vision_tower`` (a CLIP or FG-CLIP directory, or a hub id), as LLaVA
reads it, or from ``--vision-tower``. A row for ``<image>`` is appended to the vocabulary, zero
and outside the loss and generation (:func:`mllm.builder.use_language_model_vocabulary`), so
``to-llava`` then ``from-llava`` gives back the original weights exactly.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.utils import logging

from fgclip.checkpoint_files import (
    checkpoint_weight_files,
    read_checkpoint_weights,
    read_json_object,
    read_tensor_file,
)
from fgclip.errors import CheckpointError, CommandParser, ConfigError, run_command, write_atomically
from fgclip.processing_fgclip import CLIP_MEAN, CLIP_STD

from .builder import (
    IMAGE_TOKEN,
    PROJECTOR_KEYS,
    SENTENCEPIECE_MODEL,
    VISION_FEATURE_LAYER,
    build_processor,
    llava_config,
    load_language_tokenizer,
    load_llava,
    projector_from_llava,
    save_llava,
)
from .tower import patch_tokens, vision_tower_from_fgclip

logger = logging.get_logger(__name__)

TOWER_DIRECTORY = "vision_tower"
PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
LLAVA_MAX_LENGTH = 2048  # LLaVA-1.5's model_max_length, which its saved tokenizer config carries
# Our (in-memory) names -> LLaVA's; the first matching prefix is replaced. The tower's names are
# transformers 4.37's CLIPVisionModel ones under LLaVA's prefix (``tower_key``).
OUR_TOWER, LLAVA_TOWER = "model.vision_tower.", "model.vision_tower.vision_tower."
OURS_TO_LLAVA = (
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
)
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


# ---------------------------------------------------------------- names
def tower_key(key: str) -> str:
    """A CLIP vision tensor name as transformers 4.37's ``CLIPVisionModel`` (LLaVA's) has it:
    ``vision_model.embeddings...`` (transformers 5 keeps no ``vision_model.`` level in memory)."""
    return key if key.startswith("vision_model.") else "vision_model." + key


def bare_tower_key(key: str) -> str:
    return key.removeprefix("vision_model.")


# ---------------------------------------------------------------- ours -> LLaVA
def llava_model_name_problem(directory: str | os.PathLike) -> str | None:
    """Why LLaVA's scripts would not open ``directory`` as a LLaVA model, from its name (None: they would)."""
    parts = str(directory).rstrip("/").split("/")
    name = parts[-2] + "_" + parts[-1] if parts[-1].startswith("checkpoint-") and len(parts) > 1 else parts[-1]
    lowered = name.lower()
    if "llava" not in lowered:
        return (f"the directory name {name!r} must contain 'llava': LLaVA's scripts name a model after the last "
                "component of its path and load_pretrained_model opens a name without 'llava' as a plain "
                "language model")
    for word, meaning in (("lora", "a LoRA checkpoint that needs --model-base"), ("mpt", "an MPT model"),
                          ("mistral", "a Mistral model")):
        if word in lowered:
            return (f"the directory name {name!r} contains {word!r}, which LLaVA's load_pretrained_model reads "
                    f"as {meaning}")
    return None


def official_config(config: LlavaConfig, columns: int, tower_path: str, pad: bool, pad_token_id: int | None,
                    dtype: torch.dtype, where: str) -> dict:
    """LLaVA-1.5's ``config.json`` for a Llava config of ours (transformers 4.37 field names)."""
    text = config.text_config
    if text.model_type != "llama":
        raise CheckpointError(where, f"the language model is {text.model_type!r}; LLaVA-1.5's layout holds a Llama")
    if getattr(text, "mlp_bias", False) or text.head_dim != text.hidden_size // text.num_attention_heads:
        raise CheckpointError(where, "the language model has MLP biases or a head_dim other than hidden / heads, "
                                     "which transformers 4.37's Llama (LLaVA's) cannot express")
    rope = dict(text.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        rope_scaling = None
    elif rope_type in ("linear", "dynamic") and set(rope) <= {"rope_type", "type", "factor", "rope_theta"}:
        rope_scaling = {"type": rope_type, "factor": rope["factor"]}
    else:
        raise CheckpointError(where, f"rope {rope} cannot be written for transformers 4.37 "
                                     "(default, linear or dynamic)")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise CheckpointError(where, f"vision_feature_layer {layer!r}: LLaVA reads one layer")
    strategies = {"default": "patch", "full": "cls_patch"}
    if config.vision_feature_select_strategy not in strategies:
        raise CheckpointError(where, f"vision_feature_select_strategy {config.vision_feature_select_strategy!r}")
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise CheckpointError(where, "the projector is not LLaVA's mlp2x_gelu (GELU with biases)")
    return {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "vocab_size": columns,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": rope_scaling,
        "attention_bias": text.attention_bias,
        "attention_dropout": text.attention_dropout,
        "pretraining_tp": 1,
        "tie_word_embeddings": text.tie_word_embeddings,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.37.2",
        "mm_vision_tower": tower_path,
        "mm_hidden_size": config.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": layer,
        "mm_vision_select_feature": strategies[config.vision_feature_select_strategy],
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_projector_lr": None,
        "use_mm_proj": True,
        "image_aspect_ratio": "pad" if pad else "square",
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "unfreeze_mm_vision_tower": False,
        "tokenizer_model_max_length": LLAVA_MAX_LENGTH,
        "tokenizer_padding_side": "right",
    }


def clip_preprocessor_config(image_size: int, mean, std) -> dict:
    """A ``CLIPImageProcessor`` config as openai/clip-vit-large-patch14-336 ships it (resize the short side,
    bicubic, centre crop, normalise); LLaVA pads to a square itself first when ``image_aspect_ratio`` is pad."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(mean), "image_std": list(std),
        "do_convert_rgb": True,
    }


def write_json(path: Path, value: dict) -> None:
    write_atomically(path, json.dumps(value, indent=2) + "\n")


def save_weights(weights: dict[str, torch.Tensor], directory: Path) -> None:
    """safetensors shards (``model.safetensors`` or ``model-0000x-of-0000n.safetensors`` with an index),
    with the ``format: pt`` metadata transformers 4.37 requires."""
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict({key: value.contiguous() for key, value in weights.items()}, directory,
                          filename_pattern="model{suffix}.safetensors", max_shard_size="5GB")


def to_llava(src: str | os.PathLike, dst: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
             mm_vision_tower: str | None = None) -> None:
    """Write the official LLaVA-1.5 directory ``dst`` from our directory ``src`` (see the module docstring).

    Args:
        tokenizer: a directory holding the sentencepiece ``tokenizer.model`` of the language model
            (default: ``src``, where :func:`mllm.save_llava` copies it).
        mm_vision_tower: the value written to ``mm_vision_tower`` (default: the absolute path of
            ``dst/vision_tower``, which the conversion writes).
    """
    src, dst = Path(src), Path(dst)
    problem = llava_model_name_problem(dst.resolve())
    if problem:
        raise ConfigError(f"{dst}: {problem}")
    if not (src / "config.json").is_file():
        raise CheckpointError(src, "no config.json (expected a LLaVA directory of ours)")
    config = llava_config(src)
    if config.vision_config.model_type != "clip_vision_model":
        raise CheckpointError(src, f"the vision tower is {config.vision_config.model_type!r}; "
                                   "LLaVA-1.5 reads a CLIP tower")
    model, processor = load_llava(src, dtype="auto")  # transformers reads every saved key layout
    weights = model.state_dict()
    del model
    image_token_id = config.image_token_id
    rows = config.text_config.vocab_size
    sentencepiece = Path(tokenizer or src) / SENTENCEPIECE_MODEL
    if not sentencepiece.is_file():
        raise CheckpointError(sentencepiece, "not found; LLaVA's slow LlamaTokenizer reads the sentencepiece model: "
                                             "pass --tokenizer with the language model's directory")
    added = len(processor.tokenizer) - image_token_id
    if image_token_id != rows - 1 or added != 1:
        raise CheckpointError(src, f"<image> (id {image_token_id}) must be the one token added to the language model's "
                                   f"vocabulary, in its last row (rows {rows}, tokenizer {len(processor.tokenizer)}); "
                                   "LLaVA's layout has no room for other added tokens")
    official = {}
    for key, value in weights.items():
        if key.startswith(OUR_TOWER):
            official[LLAVA_TOWER + tower_key(key[len(OUR_TOWER):])] = value
            continue
        for ours, theirs in OURS_TO_LLAVA:
            if key.startswith(ours):
                official[theirs + key[len(ours):]] = value
                break
        else:
            raise CheckpointError(src, f"unexpected tensor {key!r} for a Llava with a CLIP tower and a Llama")
    for key in EMBEDDINGS:
        if key in official:
            official[key] = official[key][:image_token_id].clone()
    dtype = official["model.embed_tokens.weight"].dtype

    dst.mkdir(parents=True, exist_ok=True)
    tower_dir = dst / TOWER_DIRECTORY
    tower_dir.mkdir(exist_ok=True)
    save_weights({key[len(LLAVA_TOWER):]: value for key, value in official.items() if key.startswith(LLAVA_TOWER)},
                 tower_dir)
    tower_config = config.vision_config.to_dict()
    tower_config.update(architectures=["CLIPVisionModel"], model_type="clip_vision_model",
                        torch_dtype=str(dtype).removeprefix("torch."), transformers_version="4.37.2")
    for key in ("dtype", "_name_or_path", "output_hidden_states", "return_dict"):
        tower_config.pop(key, None)
    write_json(tower_dir / "config.json", tower_config)
    image_processor = processor.image_processor
    write_json(tower_dir / "preprocessor_config.json", clip_preprocessor_config(
        config.vision_config.image_size, image_processor.image_mean, image_processor.image_std))

    save_weights(official, dst)
    tokenizer_ = processor.tokenizer
    pads = bool(getattr(image_processor, "do_pad", False))
    write_json(dst / "config.json", official_config(
        config, image_token_id, mm_vision_tower or str(tower_dir.resolve()), pads, tokenizer_.pad_token_id, dtype,
        str(src)))
    text = config.text_config
    write_json(dst / "generation_config.json", {
        "bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id, "pad_token_id": tokenizer_.pad_token_id,
        "max_length": text.max_position_embeddings, "transformers_version": "4.37.2"})
    if sentencepiece.resolve() != (dst / SENTENCEPIECE_MODEL).resolve():
        shutil.copyfile(sentencepiece, dst / SENTENCEPIECE_MODEL)
    special = {name: getattr(tokenizer_, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    write_json(dst / "special_tokens_map.json", {name: value for name, value in special.items() if value is not None})
    write_json(dst / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        **special, "clean_up_tokenization_spaces": False, "legacy": bool(getattr(tokenizer_, "legacy", True)),
        "model_max_length": LLAVA_MAX_LENGTH, "padding_side": "right", "sp_model_kwargs": {}})


# ---------------------------------------------------------------- LLaVA -> ours
def checkpoint_kind(src: Path) -> str:
    """``full``, ``lora`` (LLaVA's LoRA save) or ``projector`` (stage 1: ``mm_projector.bin``)."""
    if src.is_file():
        if src.name.endswith(".bin"):
            return "projector"
        raise CheckpointError(src, f"expected a LLaVA checkpoint directory or a stage-1 {PROJECTOR_FILE}")
    if not src.is_dir():
        raise CheckpointError(src, "checkpoint directory not found")
    if (src / ADAPTER_CONFIG).is_file():
        return "lora"
    if (src / PROJECTOR_FILE).is_file() and not checkpoint_weight_files(src):
        return "projector"
    return "full"


def llava_fields(src: Path, kind: str, model_base: Path | None) -> dict:
    """The checkpoint's ``config.json`` (a stage-1 file alone: the base model's, with LLaVA-1.5's defaults)."""
    config_path = (src.parent if src.is_file() else src) / "config.json"
    if config_path.is_file():
        fields = read_json_object(config_path)
    elif kind == "projector" and model_base is not None:
        fields = {**read_json_object(model_base / "config.json"), "mm_projector_type": "mlp2x_gelu",
                  "mm_vision_select_layer": VISION_FEATURE_LAYER, "mm_vision_select_feature": "patch"}
        config_path = model_base / "config.json"
    else:
        raise CheckpointError(config_path, "file not found")
    where = str(config_path)
    checks = [
        ("mm_projector_type", fields.get("mm_projector_type", "linear"), ("mlp2x_gelu",)),
        ("mm_vision_select_feature", fields.get("mm_vision_select_feature", "patch"), ("patch", "cls_patch")),
        ("mm_patch_merge_type", fields.get("mm_patch_merge_type", "flat"), ("flat",)),
        ("image_aspect_ratio", fields.get("image_aspect_ratio", "square"), ("square", "pad", None)),
        ("mm_use_im_start_end", fields.get("mm_use_im_start_end", False), (False,)),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise CheckpointError(where, f"field {name!r} is {value!r}; LLaVA-1.5's layout has {allowed[0]!r}")
    architectures = fields.get("architectures") or ["LlavaLlamaForCausalLM"]
    if not any(name in ("LlavaLlamaForCausalLM", "LlamaForCausalLM") for name in architectures):
        raise CheckpointError(where, f"field 'architectures' is {architectures}; LLaVA-1.5 is LlavaLlamaForCausalLM")
    if not isinstance(fields.get("mm_vision_select_layer", VISION_FEATURE_LAYER), int):
        raise CheckpointError(where, "field 'mm_vision_select_layer' must be an integer")
    return fields


def load_tower(path: str, where: str) -> tuple[CLIPVisionModel, tuple, tuple]:
    """The vision tower named by ``mm_vision_tower`` (or ``--vision-tower``) and its image mean and std:
    a CLIP checkpoint (vision-only or whole, a directory or a hub id) or an FG-CLIP one."""
    from transformers.image_processing_base import ImageProcessingMixin

    is_local = Path(path).is_dir()
    if not is_local and (Path(path).exists() or path.startswith(("/", "./", "../"))):
        raise CheckpointError(where, f"the vision tower {path!r} is not a directory; pass --vision-tower")
    try:
        model_type = CLIPVisionConfig.get_config_dict(path)[0].get("model_type")
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(where, f"cannot read the vision tower {path!r} ({reason}); pass --vision-tower "
                                     "a local CLIP directory") from None
    if model_type in ("clip", "clip_vision_model"):
        tower = CLIPVisionModel.from_pretrained(path, dtype=torch.float32)
    else:
        tower = vision_tower_from_fgclip(path, dtype=torch.float32)
    try:
        processor_fields = ImageProcessingMixin.get_image_processor_dict(path)[0]
    except OSError:
        processor_fields = {}
    mean = tuple(processor_fields.get("image_mean") or CLIP_MEAN)
    std = tuple(processor_fields.get("image_std") or CLIP_STD)
    return tower, mean, std


ADAPTER_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def merge_lora_weights(weights: dict[str, torch.Tensor], src: Path) -> None:
    """Add each LoRA update ``scale * B @ A`` of LLaVA's adapter in ``src`` to ``weights`` (LLaVA's names), in place."""
    adapter_config = read_json_object(src / ADAPTER_CONFIG)
    where = str(src / ADAPTER_CONFIG)
    for name, allowed in (("bias", ("none", None)), ("use_dora", (False, None)), ("fan_in_fan_out", (False, None))):
        if adapter_config.get(name) not in allowed:
            raise CheckpointError(where, f"field {name!r} is {adapter_config[name]!r}; only plain LoRA "
                                         f"({name}={allowed[0]!r}, as LLaVA's scripts train it) is read")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise CheckpointError(where, "per-module ranks or alphas (rank_pattern / alpha_pattern) are not read")
    rank, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
    if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, (int, float)):
        raise CheckpointError(where, "fields 'r' and 'lora_alpha' must be numbers")
    scale = alpha / math.sqrt(rank) if adapter_config.get("use_rslora") else alpha / rank
    adapter_path = next((src / name for name in ADAPTER_FILES if (src / name).is_file()), None)
    if adapter_path is None:
        raise CheckpointError(src, f"no adapter weights ({' or '.join(ADAPTER_FILES)})")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in read_tensor_file(adapter_path).items():
        match = ADAPTER_KEY.match(key)
        if match is None:
            raise CheckpointError(adapter_path, f"unexpected tensor {key!r} (expected LoRA A and B weights)")
        pairs.setdefault(match["module"], {})[match["part"]] = value
    for module, pair in sorted(pairs.items()):
        target = module + ".weight"
        if set(pair) != {"A", "B"} or target not in weights:
            raise CheckpointError(adapter_path, f"LoRA weights of {module!r} do not match a weight of the base model")
        base = weights[target]
        update = scale * (pair["B"].float() @ pair["A"].float())
        if update.shape != base.shape:
            raise CheckpointError(adapter_path, f"LoRA update of {module!r} is {tuple(update.shape)}, the weight "
                                                f"{tuple(base.shape)}")
        weights[target] = (base.float() + update).to(base.dtype)


def non_lora_trainables(src: Path) -> dict[str, torch.Tensor]:
    """``non_lora_trainables.bin`` under LLaVA's names, with the prefixes LLaVA's loader strips."""
    weights = read_tensor_file(src / NON_LORA_FILE)
    weights = {(key[len("base_model."):] if key.startswith("base_model.") else key): value
               for key, value in weights.items()}
    if any(key.startswith("model.model.") for key in weights):
        weights = {(key[len("model."):] if key.startswith("model.") else key): value for key, value in weights.items()}
    return weights


def official_weights(src: Path, kind: str, model_base: Path | None) -> dict[str, torch.Tensor]:
    """The model's weights under LLaVA's names, as ``load_pretrained_model`` assembles them."""
    if kind == "full":
        return read_checkpoint_weights(src)
    if model_base is None:
        what = "a LoRA checkpoint (adapter_config.json)" if kind == "lora" else f"a stage-1 {PROJECTOR_FILE}"
        raise ConfigError(f"{src}: {what}: pass --model-base, the language model it was trained from "
                          "(LLaVA's model_base)")
    weights = read_checkpoint_weights(model_base)
    if kind == "projector":
        path = src if src.is_file() else src / PROJECTOR_FILE
        projector = projector_from_llava(read_tensor_file(path), str(path))
        weights.update({"model.mm_projector." + key.replace("linear_1.", "0.").replace("linear_2.", "2."): value
                        for key, value in projector.items()})
        return weights
    extra = non_lora_trainables(src)
    unknown = [key for key in extra if not key.startswith("model.mm_projector.") and key not in weights]
    if unknown:
        raise CheckpointError(src / NON_LORA_FILE, f"tensor {unknown[0]!r} is neither the projector nor a base weight")
    weights.update(extra)
    merge_lora_weights(weights, src)
    return weights


def from_llava(src: str | os.PathLike, model_base: str | os.PathLike | None = None,
               vision_tower: str | None = None, dtype: torch.dtype | None = None,
               ) -> tuple[dict[str, torch.Tensor], LlavaConfig, GenerationConfig, LlavaProcessor]:
    """Our weights, config, generation config and processor for an official LLaVA-1.5 checkpoint."""
    src = Path(src)
    model_base = Path(model_base) if model_base is not None else None
    if model_base is not None and not (model_base / "config.json").is_file():
        raise CheckpointError(model_base, "no config.json (expected the language model directory)")
    kind = checkpoint_kind(src)
    fields = llava_fields(src, kind, model_base)
    weights = official_weights(src, kind, model_base)
    tower_path = vision_tower or fields.get("mm_vision_tower") or fields.get("vision_tower")
    if not tower_path:
        raise CheckpointError(src, "config.json names no 'mm_vision_tower'; pass --vision-tower")
    tower, mean, std = load_tower(str(tower_path), f"{src}: mm_vision_tower")
    tokenizer_dir = src if kind == "full" else model_base
    tokenizer = load_language_tokenizer(tokenizer_dir)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    ours: dict[str, torch.Tensor] = {}
    checkpoint_tower = {}
    for key, value in weights.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older transformers saved
        if key.startswith(LLAVA_TOWER):
            checkpoint_tower[bare_tower_key(key[len(LLAVA_TOWER):])] = value
        elif key.startswith("model.mm_projector."):
            ours["model.multi_modal_projector." + PROJECTOR_KEYS.get(key[len("model.mm_projector."):], "?")] = value
        elif key.startswith("model."):
            ours["model.language_model." + key[len("model."):]] = value
        elif key.startswith("lm_head."):
            ours[key] = value
        else:
            raise CheckpointError(src, f"unexpected tensor {key!r} for LLaVA-1.5")
    if "model.multi_modal_projector.?" in ours or not any("multi_modal_projector" in key for key in ours):
        raise CheckpointError(src, "no mlp2x_gelu projector (model.mm_projector.{0,2}.{weight,bias})")
    tower_weights = tower.state_dict()
    bare = {bare_tower_key(key): value for key, value in tower_weights.items()}
    differing = [key for key, value in checkpoint_tower.items()
                 if key not in bare or not torch.equal(value, bare[key].to(value.dtype))]  # in the checkpoint's dtype
    if differing:
        logger.warning(f"{src}: the checkpoint's tower weights (model.vision_tower.vision_tower.*) differ from "
                       f"{tower_path} ({len(differing)} tensors, e.g. {differing[0]}); the tower is read from "
                       f"{tower_path}, as LLaVA's load_pretrained_model reads it")
    ours.update({OUR_TOWER + key: value for key, value in tower_weights.items()})

    embed_key = "model.language_model.embed_tokens.weight"
    if embed_key not in ours:
        raise CheckpointError(src, "no model.embed_tokens.weight")
    rows = ours[embed_key].shape[0]
    if rows != image_token_id:
        raise CheckpointError(src, f"the embeddings have {rows} rows, the tokenizer {image_token_id} tokens; "
                                   "LLaVA-1.5 keeps the language model's vocabulary")
    for key in (embed_key, "lm_head.weight"):
        if key in ours:
            zero = torch.zeros(1, ours[key].shape[1], dtype=ours[key].dtype)
            ours[key] = torch.cat([ours[key], zero])
    text_fields = {key: value for key, value in fields.items()
                   if not key.startswith(("mm_", "tune_", "freeze_", "unfreeze_", "tokenizer_", "image_"))
                   and key not in ("architectures", "model_type", "use_mm_proj", "_name_or_path",
                                   "transformers_version", "torch_dtype", "dtype", "vision_tower", "s2", "s2_scales")}
    rope_scaling = text_fields.pop("rope_scaling", None) or {}
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    text_fields["rope_parameters"] = {**{key: value for key, value in rope_scaling.items() if key != "type"},
                                      "rope_type": rope_type, "rope_theta": text_fields.pop("rope_theta", 10000.0)}
    text_config = LlamaConfig.from_dict({**text_fields, "vocab_size": rows + 1,
                                         "pad_token_id": tokenizer.pad_token_id})
    select_layer = fields.get("mm_vision_select_layer", VISION_FEATURE_LAYER)
    strategy = "full" if fields.get("mm_vision_select_feature", "patch") == "cls_patch" else "default"
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=patch_tokens(tower.config) + (strategy == "full"),
        projector_hidden_act="gelu",
        vision_feature_layer=select_layer,
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=True,
    )
    target_dtype = dtype or ours[embed_key].dtype
    ours = {key: value.to(target_dtype) for key, value in ours.items()}
    config.dtype = target_dtype
    config.text_config.dtype = target_dtype
    config.vision_config.dtype = target_dtype

    generation = GenerationConfig(bos_token_id=text_config.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, suppress_tokens=[image_token_id])
    processor = build_processor(tokenizer, tower.config, mean, std)
    processor.image_processor.do_pad = fields.get("image_aspect_ratio") == "pad"
    if strategy == "full":
        processor.vision_feature_select_strategy = "full"
    return ours, config, generation, processor


def assemble(weights: dict[str, torch.Tensor], config: LlavaConfig, generation: GenerationConfig,
             where) -> LlavaForConditionalGeneration:
    """``LlavaForConditionalGeneration(config)`` holding exactly ``weights`` (names and shapes
    checked; no memory besides the tensors themselves)."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if config.text_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        weights.pop("lm_head.weight", None)
    found = {key: tuple(value.shape) for key, value in weights.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(where, f"converted weights do not fit Llava: missing {missing[:3]}, "
                                     f"unexpected {unexpected[:3]}")
    wrong = [key for key in expected if expected[key] != found[key]]
    if wrong:
        raise CheckpointError(where, f"{wrong[0]} is {found[wrong[0]]}, Llava expects {expected[wrong[0]]}")
    model.load_state_dict(weights, strict=False, assign=True)
    if config.text_config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = generation
    return model


def save_converted(weights: dict[str, torch.Tensor], config: LlavaConfig, generation: GenerationConfig,
                   processor: LlavaProcessor, dst: str | os.PathLike, where="") -> None:
    """Write our directory (as :func:`mllm.save_llava` writes it) from converted parts."""
    save_llava(assemble(weights, config, generation, where), processor, dst)


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description="Convert LLaVA-1.5 checkpoints between LLaVA's layout and ours.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("to-llava", help="ours -> an official LLaVA-1.5 directory")
    out.add_argument("src", help="our LLaVA directory (mllm.save_llava, mllm.train, mllm.merge_lora)")
    out.add_argument("dst", help="the LLaVA directory to write; its name must contain 'llava' (LLaVA's scripts)")
    out.add_argument("--tokenizer", default=None, help="directory with the LM's sentencepiece tokenizer.model")
    out.add_argument("--mm-vision-tower", default=None,
                     help="value written to mm_vision_tower (default: the absolute path of DST/vision_tower)")
    into = commands.add_parser("from-llava", help="an official LLaVA-1.5 checkpoint -> ours")
    into.add_argument("src", help="a LLaVA checkpoint directory (full or LoRA), or a stage-1 directory or "
                                  "mm_projector.bin")
    into.add_argument("dst", help="our LLaVA directory to write")
    into.add_argument("--model-base", default=None, help="the language model a LoRA or stage-1 checkpoint needs")
    into.add_argument("--vision-tower", default=None, help="the tower to read instead of config.json's mm_vision_tower")
    into.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                      help="dtype of the written weights (default: the checkpoint's)")
    args = parser.parse_args(argv)
    if args.command == "to-llava":
        to_llava(args.src, args.dst, tokenizer=args.tokenizer, mm_vision_tower=args.mm_vision_tower)
    else:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        parts = from_llava(args.src, args.model_base, args.vision_tower, dtype)
        save_converted(*parts, args.dst, where=args.src)


if __name__ == "__main__":
    sys.exit(run_command(main))
