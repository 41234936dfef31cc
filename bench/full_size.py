"""One step of each used-by command at the real model shapes, with random weights, on this machine.

    python bench/full_size.py                          # all three (about an hour on 2 cores)
    python bench/full_size.py --only llava --threads 2 --work-dir ~/.cache/fgclip/full_size

Workloads, each started as users start it (a subprocess of the shipped command, its own precision
and DeepSpeed stage, one CPU process); only the checkpoints and data are random stand-ins, cached
under ``--work-dir``:

* ``fgclip``: ``tools/train_fgclip.py configs/fgclip/stage2_vitl14.yaml`` (FG-CLIP ViT-L/14-336,
  DeepSpeed ZeRO-2, bf16, activation checkpointing; tf32 off and ``use_cpu`` as its CPU form), batch 2;
* ``fvit``: ``tools/train_det.py configs/fvit_fgclip_l14.py`` at 896 px, batch 1
  (``bench/fvit_workload.py``);
* ``llava``: ``python -m mllm.builder`` assembling a Vicuna-7B-shaped language model (32 layers,
  hidden 4096, vocabulary 32000, bf16 files) with the FG-CLIP L/14-336 tower in bf16, then
  ``LORA=1 bash mllm/finetune.sh`` at batch 1 with bf16 and LoRA rank ``--lora-r`` (default the
  shipped 128, alpha 2r), without DeepSpeed (a single-GPU LoRA run) unless ``--llava-deepspeed``
  keeps the script's ZeRO-3: ZeRO-3 in one process holds about 8 GiB above the 13 GiB of weights
  and reached 22.8 GiB at rank 16 on the 24 GiB host, where a second run was killed for memory.
  The GPU column is computed for ZeRO-3 and rank 128 (LoRA parameters scale with r).

Printed per command: seconds per step, peak resident memory (the process tree's maximum RSS, from
``wait4``), the parameter / gradient / optimizer-state bytes of the CPU run, and the model-state
bytes per GPU that follow for the documented GPU launch (ranks, ZeRO stage, batch), by the ZeRO
paper's accounting for mixed-precision Adam (2 bytes of weights, 2 of gradients and 12 of float32
master weights and moments per trained parameter; ZeRO-2 partitions the last two, ZeRO-3 all
three). Activation memory depends on the GPU's kernels and is not extrapolated from a CPU run; the
CPU peak RSS also counts the memory-mapped checkpoint pages that loading touches.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
VICUNA_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
SHARD_BYTES = 2 * GIB


@dataclass
class Measured:
    """One command's run: wall seconds, peak RSS of its process tree, its standard output."""

    seconds: float
    peak_rss: int
    stdout: str


@dataclass
class Report:
    """What is printed for one workload."""

    name: str
    seconds_per_step: float
    peak_rss: int
    trained: int
    frozen: int
    cpu_state_bytes: dict[str, int]
    gpu_setting: str
    gpu_state_bytes: int
    note: str


def run(argv: list[str], env: dict[str, str], log: Path) -> Measured:
    """Run ``argv`` from the repository root; its output goes to ``log``; peak RSS from ``wait4``."""
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                   stderr=output, text=True)
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        output.write(stdout)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(map(str, argv))} failed; see {log}")
    return Measured(time.perf_counter() - start, usage.ru_maxrss * 1024, stdout)


def mixed_precision_states(trained: int, frozen: int, ranks: int, zero: int) -> int:
    """Bytes per rank of weights, gradients and Adam states (bf16 weights and gradients, float32
    master weights and moments) under ZeRO stage ``zero`` (0: plain data parallel)."""
    weights, gradients, optimizer = 2 * (trained + frozen), 2 * trained, 12 * trained
    if zero >= 1:
        optimizer /= ranks
    if zero >= 2:
        gradients /= ranks
    if zero >= 3:
        weights /= ranks
    return int(weights + gradients + optimizer)


def train_runtime(stdout: str) -> float:
    """``train_runtime`` of transformers' closing log line."""
    return float(re.findall(r"'train_runtime': '?([0-9.]+)", stdout)[-1])


# ---------------------------------------------------------------- stand-ins (run in subprocesses)
def prepare_tower(directory: Path) -> None:
    """A random FG-CLIP ViT-L/14-336 checkpoint with its processor."""
    import torch

    from fgclip import FGCLIPConfig, FGCLIPModel, FGCLIPProcessor

    torch.manual_seed(0)
    config = FGCLIPConfig.vit_l14_336()
    FGCLIPModel(config).save_pretrained(directory)
    FGCLIPProcessor.for_config(config).save_pretrained(directory)


def prepare_language_model(directory: Path) -> None:
    """A Vicuna-7B-shaped Llama with random bf16 weights, written shard by shard (never all in memory),
    and a 32000-piece Llama tokenizer (the test tokenizer's pieces plus fillers)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from mllm.testing import tiny_llama_tokenizer

    config = LlamaConfig(**VICUNA_7B, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in LlamaForCausalLM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        current[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        size += current[name].numel() * 2
        if size >= SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(shape.numel() for shape in shapes.values()) * 2
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(directory)
    small = tiny_llama_tokenizer()
    vocab = dict(small.get_vocab())
    vocab.update({f"<filler_{index}>": index for index in range(len(vocab), VICUNA_7B["vocab_size"])})
    LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True, legacy=False).save_pretrained(directory)


def prepare_conversations(directory: Path) -> None:
    """One LLaVA finetuning record with a 640x480 image (576 image tokens at 336 px)."""
    from PIL import Image

    (directory / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (640, 480), (90, 140, 200)).save(directory / "images" / "scene.png")
    record = {"id": "0", "image": "scene.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the colour of the picture in detail."},
        {"from": "gpt", "value": "The picture is a plain light blue field without any object in it."}]}
    (directory / "finetune.json").write_text(json.dumps([record]))


def prepare_finehard(directory: Path) -> None:
    """FineHARD-format stand-in data at 336 px (boxes and 10 hard negatives per region)."""
    from fgclip.data.shapes import write_shapes_dataset

    write_shapes_dataset(directory, seed=0, num_train=8, num_test=1, image_size=336)


PREPARERS = {"tower": prepare_tower, "language_model": prepare_language_model,
             "conversations": prepare_conversations, "finehard": prepare_finehard}


def prepared(work_dir: Path, name: str, env: dict[str, str]) -> Path:
    """``work_dir/name``, written once by its preparer in a subprocess (a ``DONE`` file marks it complete)."""
    directory = work_dir / name
    if not (directory / "DONE").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        print(f"[full_size] writing the stand-in {name} to {directory}", flush=True)
        subprocess.run([sys.executable, __file__, "--prepare", name, str(directory)], cwd=REPO,
                       env={**os.environ, **env}, check=True)
        (directory / "DONE").touch()
    return directory


def safetensors_elements(directory: Path) -> int:
    """Element count of every tensor in a directory's safetensors files (read from their headers)."""
    total = 0
    for file in directory.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for extent in entry["shape"]:
                    count *= extent
                total += count
    return total


# ---------------------------------------------------------------- workloads
def run_fgclip(work_dir: Path, env: dict[str, str]) -> Report:
    tower, data = prepared(work_dir, "tower", env), prepared(work_dir, "finehard", env)
    output, batch, steps = work_dir / "runs" / "fgclip_stage2_vitl14", 2, 2
    argv = [sys.executable, "tools/train_fgclip.py", "configs/fgclip/stage2_vitl14.yaml", f"model.path={tower}",
            f"data.train={data / 'train.jsonl'}", f"data.image_root={data}", f"training.output_dir={output}",
            f"training.per_device_train_batch_size={batch}", f"training.max_steps={steps}",
            "training.tf32=false", "training.use_cpu=true", "training.dataloader_num_workers=0",
            "training.logging_steps=1", "training.save_steps=100000"]
    measured = run(argv, env, work_dir / "fgclip.log")
    parameters = safetensors_elements(tower)
    cpu = {"weights": 2 * parameters, "gradients": 2 * parameters, "optimizer": 12 * parameters}
    return Report("tools/train_fgclip.py configs/fgclip/stage2_vitl14.yaml", train_runtime(measured.stdout) / steps,
                  measured.peak_rss, parameters, 0, cpu, "8 GPUs, ZeRO-2, bf16, batch 512 per GPU",
                  mixed_precision_states(parameters, 0, 8, 2),
                  f"batch {batch}, {steps} steps (first included)")


def run_fvit(work_dir: Path, env: dict[str, str]) -> Report:
    sys.path.insert(0, str(REPO / "bench"))
    import fvit_workload  # light at import: its heavy work runs in subprocesses

    argv, extra_env, run_dir = fvit_workload.prepare(work_dir / "fvit")
    measured = run(argv, {**env, **extra_env}, work_dir / "fvit.log")
    counts = fvit_workload.parameter_counts(work_dir / "fvit")
    trained, frozen = counts["trainable"], counts["frozen"]
    # float32 weights (mmengine's AMP keeps float32 weights and autocasts), AdamW's two moments
    cpu = {"weights": 4 * (trained + frozen), "gradients": 4 * trained, "optimizer": 8 * trained}
    return Report("tools/train_det.py configs/fvit_fgclip_l14.py (896 px)", fvit_workload.seconds_per_iteration(run_dir),
                  measured.peak_rss, trained, frozen, cpu, "8 GPUs, DDP, fp16 AMP, batch 8 per GPU",
                  sum(cpu.values()), "batch 1, last logged iteration")


def projector_parameters(tower_hidden: int, hidden: int) -> int:
    """Parameters of LLaVA-1.5's mlp2x_gelu projector (two linear layers with biases)."""
    return tower_hidden * hidden + hidden + hidden * hidden + hidden


def run_llava(work_dir: Path, env: dict[str, str], lora_r: int, deepspeed: bool) -> list[Report]:
    tower = prepared(work_dir, "tower", env)
    language_model = prepared(work_dir, "language_model", env)
    data = prepared(work_dir, "conversations", env)
    assembled = work_dir / "runs" / "llava_7b_assembled"
    build = run([sys.executable, "-m", "mllm.builder", "--language-model", str(language_model), "--fgclip",
                 str(tower), "--output", str(assembled), "--dtype", "bfloat16"], env, work_dir / "builder.log")
    weights = 2 * safetensors_elements(assembled)
    print(f"[full_size] mllm.builder: {build.seconds:.0f} s, peak RSS {build.peak_rss / GIB:.1f} GiB = "
          f"{build.peak_rss / weights:.2f}x the {weights / GIB:.1f} GiB of bf16 weights", flush=True)
    output = work_dir / "runs" / "llava_7b_lora"
    script_env = {**env, "LORA": "1", "LORA_R": str(lora_r), "LORA_ALPHA": str(2 * lora_r), "NPROC": "1", "PER_DEVICE_BATCH": "1", "GLOBAL_BATCH": "1",
                  "PRETRAINED": str(assembled), "DATA": str(data / "finetune.json"), "IMAGES": str(data / "images"),
                  "OUTPUT": str(output), "PYTHON": sys.executable, **({} if deepspeed else {"DEEPSPEED": ""})}
    measured = run(["bash", "mllm/finetune.sh", "--max_steps", "1", "--dataloader_num_workers", "0",
                    "--save_strategy", "no", "--disable_tqdm", "true"], script_env, work_dir / "llava.log")
    trained = int(re.search(r"([0-9,]+) of ([0-9,]+) parameters trainable", measured.stdout).group(1).replace(",", ""))
    total = int(re.search(r"([0-9,]+) of ([0-9,]+) parameters trainable", measured.stdout).group(2).replace(",", ""))
    frozen = total - trained
    if deepspeed:  # bf16 weights and gradients, float32 master weights and moments
        cpu = {"weights": 2 * total, "gradients": 2 * trained, "optimizer": 12 * trained}
    else:  # bf16 frozen weights; the adapters (peft's float32) and the bf16 projector train as they are
        cpu = {"weights": 2 * frozen + 4 * trained, "gradients": 4 * trained, "optimizer": 8 * trained}
    projector = projector_parameters(1024, VICUNA_7B["hidden_size"])
    shipped_trained = projector + (trained - projector) * 128 // lora_r  # LoRA r 128, as finetune.sh ships
    return [
        Report("python -m mllm.builder (Vicuna-7B shape + L/14-336, bf16)", build.seconds, build.peak_rss, 0,
               weights // 2, {"weights": weights, "gradients": 0, "optimizer": 0}, "every rank builds", weights,
               f"peak {build.peak_rss / weights:.2f}x the bf16 weights"),
        Report(f"LORA=1 LORA_R={lora_r} {'' if deepspeed else 'DEEPSPEED= '}bash mllm/finetune.sh "
               f"(Vicuna-7B shape, {'ZeRO-3' if deepspeed else 'no DeepSpeed'}, bf16)",
               train_runtime(measured.stdout), measured.peak_rss, trained, frozen, cpu,
               "8 GPUs, ZeRO-3, bf16, batch 16 per GPU, LoRA r 128",
               mixed_precision_states(shipped_trained, frozen, 8, 3),
               f"batch 1, 1 step; r 128 trains {shipped_trained / 1e6:,.0f} M"),
    ]


def print_header(threads: int) -> None:
    print(f"\n| command | s/step ({threads} threads) | peak RSS | trained / frozen params | CPU weights + grads + "
          "optimizer | GPU setting | model states per GPU | note |")
    print("|---|---|---|---|---|---|---|---|", flush=True)


def print_row(report: Report) -> None:
    """One table row, printed as soon as its command has run."""
    cpu = " + ".join(f"{report.cpu_state_bytes[key] / GIB:.1f}" for key in ("weights", "gradients", "optimizer"))
    print(f"| {report.name} | {report.seconds_per_step:.1f} | {report.peak_rss / GIB:.1f} GiB | "
          f"{report.trained / 1e6:,.1f} M / {report.frozen / 1e6:,.1f} M | {cpu} GiB | {report.gpu_setting} | "
          f"{report.gpu_state_bytes / GIB:.1f} GiB | {report.note} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="fgclip,fvit,llava", help="comma-separated: fgclip, fvit, llava")
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "fgclip" / "full_size",
                        help="stand-in checkpoints and data (kept for the next run) and the runs' logs")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--lora-r", type=int, default=128, help="LoRA rank of the llava step (shipped: 128)")
    parser.add_argument("--llava-deepspeed", action="store_true",
                        help="keep finetune.sh's ZeRO-3 (about 23 GiB at rank 16 in one process)")
    parser.add_argument("--prepare", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        PREPARERS[args.prepare[0]](Path(args.prepare[1]))
        return
    work_dir = args.work_dir.expanduser()
    (work_dir / "runs").mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    chosen = args.only.split(",")
    print_header(args.threads)
    if "fgclip" in chosen:
        print_row(run_fgclip(work_dir, env))
    if "fvit" in chosen:
        print_row(run_fvit(work_dir, env))
    if "llava" in chosen:
        for report in run_llava(work_dir, env, args.lora_r, args.llava_deepspeed):
            print_row(report)

if __name__ == "__main__":
    main()
