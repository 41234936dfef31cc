"""FG-OVD evaluation against upstream FG-CLIP v1's own ``fgovd_eval.py`` (``bench/eval.py --upstream-src``).

Workload: the first N items of FG-CLIP's released hard file, noise JPEGs at the recorded image
sizes, one random ViT-B/16 checkpoint in the upstream layout (``model_type: clip`` and upstream's
parameter names). Both sides run as fresh processes with the same thread count and are timed
whole (start-up, model load, images, texts, scoring): upstream as
``bench/upstream_fgovd.py`` -> ``fgovd_eval.py``, ours as ``fgclip eval --tasks fgovd``. The floor
printed last is the fastest any command could be on this machine: the imports of torch and
transformers plus the FLOPs at the measured large-matmul rate.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from fgclip import FGCLIPConfig, FGCLIPModel, FGCLIPProcessor
from fgclip.image_io import load_image
from fgclip.processing_fgclip import _clip_bpe_vocab
from rates import describe_rate, matmul_gflops
from startup import BASELINE, best_seconds

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


def write_workload(directory: Path, fgovd_file: Path, items: int, seed: int) -> dict:
    """Data root (``fgovd/``, ``coco/val2017``), upstream's working directory, checkpoint, model base."""
    lines = fgovd_file.read_text().splitlines()[:items]
    records = [json.loads(line) for line in lines]
    root = directory / "data"
    (root / "fgovd").mkdir(parents=True)
    (root / "fgovd" / "h_attributes_llava.jsonl").write_text("\n".join(lines) + "\n")
    upstream_cwd = directory / "upstream"
    (upstream_cwd / "fgovd_json").mkdir(parents=True)
    (upstream_cwd / "fgovd_json" / "1_attributes_llava.jsonl").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(seed)
    images = {}
    for record in records:
        images[record["img_path"]] = (record["width"], record["height"])
    for relative, (width, height) in images.items():
        path = root / "coco" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
    model = write_upstream_checkpoint(directory / "checkpoint", seed)
    write_model_base(directory / "clip-base")
    return {"root": root, "upstream_cwd": upstream_cwd, "checkpoint": directory / "checkpoint",
            "base": directory / "clip-base", "records": records, "images": [root / "coco" / relative for relative in images], "model": model,
            "processor": FGCLIPProcessor.for_config(model.config)}


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
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return seconds, run.stdout


def run_upstream(args, workload: dict, threads: int) -> tuple[float, float]:
    """Seconds of the whole upstream process and the accuracy it printed."""
    command = [args.upstream_python, str(BENCH / "upstream_fgovd.py"), str(Path(args.upstream_src).resolve()),
               "--model-path", str(workload["checkpoint"]), "--model-base", str(workload["base"]),
               "--image-folder", f"{workload['root'] / 'coco'}/", "--max_length", "77", "--image_size", "224"]
    seconds, stdout = timed_run(command, workload["upstream_cwd"], threads)
    return seconds, float(re.findall(r"precision:\s*([0-9.]+)", stdout)[-1])


def run_ours(workload: dict, threads: int, output: Path, bf16: bool) -> tuple[float, float]:
    """Seconds of the whole ``fgclip eval`` command (its defaults otherwise) and its FG-OVD hard accuracy."""
    command = [sys.executable, "-c", "import sys; from fgclip.cli import main; sys.exit(main())", "eval",
               "--model", str(workload["checkpoint"]), "--data-root", str(workload["root"]), "--tasks", "fgovd",
               "--output-dir", str(output), "--no-progress", "--device", "cpu",
               *(["--bf16"] if bf16 else [])]
    seconds, _ = timed_run(command, output.parent, threads)
    results = json.loads((output / "results.json").read_text())
    return seconds, find_accuracy(results)


def find_accuracy(results) -> float:
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


def decode_seconds(workload: dict) -> float:
    """Reading and resizing every image of the workload into model input, as ``fgclip eval`` does."""
    processor = workload["processor"]
    start = time.perf_counter()
    for path in workload["images"]:
        processor(images=[load_image(path)])
    return time.perf_counter() - start


def workload_flops(workload: dict) -> tuple[float, float]:
    """FLOPs of ours (each image once without its last full block, each distinct caption once at its
    own token count) and of upstream's loop (per item the whole tower with the value path, and the
    item's captions at 77 tokens), counted by torch's FlopCounterMode on one image / the texts."""
    model, processor, records = workload["model"], workload["processor"], workload["records"]
    pixels = processor(images=[load_image(workload["images"][0])])["pixel_values"]
    box = [torch.tensor([[10.0, 10.0, 100.0, 100.0]])]
    captions = [record["pos_expression"] + record["neg_expression"] for record in records]
    distinct = sorted({text for item in captions for text in item})

    def count(function) -> float:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            function()
        return counter.get_total_flops()

    region_image = count(lambda: model.encode_image(pixels, dense=False, boxes=box, image_embeds=False))
    full_image = count(lambda: model.encode_image(pixels, dense=False, boxes=box))
    lengths = processor(text=distinct, text_kind="region", padding="longest")["attention_mask"].sum(dim=1).tolist()
    example = dict(zip(lengths, distinct))  # one caption of each token count
    per_length = {length: count(lambda: model.get_text_features(**processor(text=[text], text_kind="region",
                                                                            padding="longest")))
                  for length, text in example.items()}
    one_text_77 = count(lambda: model.get_text_features(**processor(text=distinct[:1], text_kind="region")))
    ours = len(workload["images"]) * region_image + sum(per_length[length] for length in lengths)
    upstream = len(records) * full_image + sum(len(item) for item in captions) * one_text_77
    return ours, upstream


def compare_with_upstream(args) -> None:
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    fgovd_file = Path(args.fgovd_file or Path(args.upstream_src, "data/fgovd/h_attributes_llava.jsonl"))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak = {kind: matmul_gflops(dtype) for kind, dtype in dtypes.items()}
    with tempfile.TemporaryDirectory() as directory:
        workload = write_workload(Path(directory), fgovd_file, args.items, args.seed)
        records = workload["records"]
        print(f"FG-OVD hard, first {len(records)} items of {fgovd_file.name} ({len(workload['images'])} images, "
              f"{sum(len(r['neg_expression']) for r in records)} negatives), random ViT-B/16 in the upstream layout, "
              f"{threads} threads, load average {os.getloadavg()[0]:.1f}")
        upstream_seconds, upstream_accuracy = run_upstream(args, workload, threads)
        fp32_seconds, fp32_accuracy = run_ours(workload, threads, Path(directory, "fp32"), False)
        bf16_seconds, bf16_accuracy = run_ours(workload, threads, Path(directory, "bf16"), True)
        decode = decode_seconds(workload)
        ours_flops, upstream_flops = workload_flops(workload)
        imports = best_seconds([sys.executable, "-c", BASELINE], repeats=3)
    # the better of before and after: load varies
    peak = {kind: max(peak[kind], matmul_gflops(dtype)) for kind, dtype in dtypes.items()}
    print(f"upstream fgovd_eval.py, whole process:   {upstream_seconds:7.1f} s  accuracy {upstream_accuracy:.4f}")
    print(f"fgclip eval (fp32), whole command:       {fp32_seconds:7.1f} s  accuracy {fp32_accuracy:.4f}  "
          f"{upstream_seconds / fp32_seconds:.1f}x")
    print(f"fgclip eval --bf16, whole command:       {bf16_seconds:7.1f} s  accuracy {bf16_accuracy:.4f}  "
          f"{upstream_seconds / bf16_seconds:.1f}x")
    print(f"image decoding + resizing of the {len(workload['images'])} images (one process, in line): {decode:.1f} s "
          f"({100 * decode / fp32_seconds:.0f}% of the fp32 command)")
    print(describe_rate("upstream (fp32)", upstream_flops, upstream_seconds, peak["fp32"]))
    print(describe_rate("fgclip eval (fp32)", ours_flops, fp32_seconds, peak["fp32"]))
    print(describe_rate("fgclip eval --bf16", ours_flops, bf16_seconds, peak["bf16"]))
    for kind in dtypes:
        # The fastest any whole command could be here: torch + transformers imported, then our FLOPs
        # at the measured large-matmul rate (no model load, no images, no elementwise work).
        floor = imports + ours_flops / (peak[kind] * 1e9)
        print(f"floor ({kind}): import torch + transformers {imports:.1f} s + {ours_flops / 1e12:.2f} TFLOP at "
              f"{peak[kind]:.0f} GFLOP/s = {floor:.1f} s, at most {upstream_seconds / floor:.1f}x upstream")
    print(f"load average {os.getloadavg()[0]:.1f}")
