"""FG-OVD stand-in data and upstream FG-CLIP v1's own ``fgovd_eval.py`` (used by ``bench/eval.py``).

Workload: items of FG-CLIP's released hard file (the first N, or the whole file, optionally only
the items of its first M images), noise JPEGs at the recorded image sizes, one random ViT-B/16
checkpoint in the upstream layout (``model_type: clip`` and upstream's parameter names), written
once per setting and reused. Upstream runs as ``bench/upstream_fgovd.py`` -> ``fgovd_eval.py`` in
its own environment, timed whole (start-up, model load, images, texts, scoring).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from fgclip import FGCLIPConfig, FGCLIPModel
from fgclip.encoders import load_encoder
from fgclip.image_io import load_image
from fgclip.processing_fgclip import _clip_bpe_vocab

BENCH = Path(__file__).resolve().parent
# openai/clip-vit-base-patch16's preprocessor_config.json (the --model-base upstream's script reads).
CLIP_IMAGE_PROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}


def write_upstream_checkpoint(directory: Path, seed: int) -> FGCLIPModel:
    """A random ViT-B/16 FG-CLIP saved as upstream saves one: CLIP config.json, upstream key names."""
    torch.manual_seed(seed)
    config = FGCLIPConfig.vit_b16()
    model = FGCLIPModel(config).eval()
    directory.mkdir(parents=True)
    save_file({name: value.contiguous() for name, value in model.state_dict().items()},
              directory / "model.safetensors", metadata={"format": "pt"})
    tower_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "hidden_act",
                  "layer_norm_eps", "projection_dim")
    text = {key: getattr(config.text_config, key) for key in (*tower_keys, "vocab_size", "max_position_embeddings")}
    vision = {key: getattr(config.vision_config, key) for key in (*tower_keys, "image_size", "patch_size")}
    clip_config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.projection_dim,
                   "logit_scale_init_value": config.logit_scale_init_value,
                   "text_config": {**text, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
                   "vision_config": vision}
    (directory / "config.json").write_text(json.dumps(clip_config, indent=2))
    return model


def select_records(fgovd_file: Path, items: int | None, max_images: int | None) -> list[str]:
    """Lines of the first ``items`` items (all when ``None``), keeping only the items of the first
    ``max_images`` distinct images when given."""
    lines = fgovd_file.read_text().splitlines()[:items]
    if max_images is None:
        return lines
    kept_images: set[str] = set()
    kept = []
    for line in lines:
        image = json.loads(line)["img_path"]
        if image not in kept_images and len(kept_images) < max_images:
            kept_images.add(image)
        if image in kept_images:
            kept.append(line)
    return kept


def write_workload(directory: Path, fgovd_file: Path, items: int | None, seed: int,
                   max_images: int | None = None) -> dict:
    """Data root (``fgovd/``, ``coco/val2017``), upstream's working directory, checkpoint, model base;
    written once (``directory/ready.json`` records the setting) and reused."""
    lines = select_records(fgovd_file, items, max_images)
    records = [json.loads(line) for line in lines]
    images = {record["img_path"]: (record["width"], record["height"]) for record in records}
    root, upstream_cwd = directory / "data", directory / "upstream"
    setting = {"file": str(fgovd_file.resolve()), "items": len(records), "images": len(images), "seed": seed}
    ready = directory / "ready.json"
    if not ready.is_file() or json.loads(ready.read_text()) != setting:
        (root / "fgovd").mkdir(parents=True, exist_ok=True)
        (root / "fgovd" / "h_attributes_llava.jsonl").write_text("\n".join(lines) + "\n")
        (upstream_cwd / "fgovd_json").mkdir(parents=True, exist_ok=True)
        (upstream_cwd / "fgovd_json" / "1_attributes_llava.jsonl").write_text("\n".join(lines) + "\n")
        rng = np.random.default_rng(seed)
        for relative, (width, height) in images.items():
            path = root / "coco" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        if not (directory / "checkpoint").is_dir():
            write_upstream_checkpoint(directory / "checkpoint", seed)
            write_model_base(directory / "clip-base")
        ready.write_text(json.dumps(setting))
    return {"root": root, "upstream_cwd": upstream_cwd, "checkpoint": directory / "checkpoint",
            "base": directory / "clip-base", "records": records,
            "images": [root / "coco" / relative for relative in images]}


def write_model_base(directory: Path) -> None:
    """The files upstream's script reads from ``--model-base`` (openai/clip-vit-base-patch16's
    tokenizer and image processor), written from the offline CLIP vocabulary in the slow format
    that transformers 4.41 reads."""
    vocab, merges = _clip_bpe_vocab()
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = "<|endoftext|>"
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": special,
        "pad_token": special, "unk_token": special, "model_max_length": 77, "do_lower_case": True}))
    (directory / "preprocessor_config.json").write_text(json.dumps(CLIP_IMAGE_PROCESSOR))


def timed_run(command: list[str], cwd: Path, threads: int) -> tuple[float, str]:
    """Wall seconds of a fresh process with ``threads`` OpenMP threads, and its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{run.stderr[-3000:]}")
    return seconds, run.stdout


def run_upstream(upstream_src: str, upstream_python: str, workload: dict, threads: int) -> tuple[float, float]:
    """Seconds of the whole upstream process and the accuracy it printed."""
    command = [upstream_python, str(BENCH / "upstream_fgovd.py"), str(Path(upstream_src).resolve()),
               "--model-path", str(workload["checkpoint"]), "--model-base", str(workload["base"]),
               "--image-folder", f"{workload['root'] / 'coco'}/", "--max_length", "77", "--image_size", "224"]
    seconds, stdout = timed_run(command, workload["upstream_cwd"], threads)
    return seconds, float(re.findall(r"precision:\s*([0-9.]+)", stdout)[-1])


def find_accuracy(results) -> float | None:
    """The FG-OVD hard accuracy anywhere in a results.json."""
    if isinstance(results, dict):
        for key, value in results.items():
            if "fgovd" in str(key) and isinstance(value, dict) and "accuracy" in value:
                return float(value["accuracy"])
            found = find_accuracy(value)
            if found is not None:
                return found
    if isinstance(results, list):
        for value in results:
            found = find_accuracy(value)
            if found is not None:
                return found
    return None


def upstream_flops(workload: dict) -> float:
    """FLOPs of upstream's loop: per item the whole vision tower and the value path, and the item's
    captions at 77 tokens (torch's FlopCounterMode on one image and one text)."""
    encoder = load_encoder(workload["checkpoint"])
    model, processor = encoder.model, encoder.processor
    pixels = processor(images=[load_image(workload["images"][0])])["pixel_values"]
    box = [torch.tensor([[10.0, 10.0, 100.0, 100.0]])]

    def count(function) -> float:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            function()
        return counter.get_total_flops()

    full_image = count(lambda: model.encode_image(pixels, dense=False, boxes=box))
    one_text_77 = count(lambda: model.get_text_features(**processor(text=["a"], text_kind="region")))
    captions = sum(1 + len(record["neg_expression"]) for record in workload["records"])
    return len(workload["records"]) * full_image + captions * one_text_77
