"""Stage-2 training step at the ViT-B/16 configuration on the CPU, against upstream FG-CLIP's own step.

    python bench/train_step.py                                   # in-process variants only
    python bench/train_step.py --upstream-src DIR --upstream-python PY --threads 2 --rounds 3

Workload (`bench/stage2_workload.py`): batch 8 at 224 px, 4 boxes per image with 1 + 10
hard-negative texts each, long captions of 150 tokens, every other text 20 tokens, every text
distinct; L = L_global + 0.1 L_regional + 0.5 L_hard; forward under
``torch.autocast("cpu", torch.bfloat16)``, backward, then an AdamW step on float32 weights.
Variants, each in its own process (peak memory is its own; glibc keeps freed memory for reuse, as in
every CPU training run: `fgclip.host_memory`), same weights (seed 0):

* ``fgclip``: `FGCLIPForTraining` as shipped (where gradients flow: math-path attention on the
  CPU, joined q/k/v projections, QuickGELU's scalings folded into the MLP weights around one silu;
  short-path texts bucketed by length), with the fused AdamW (transformers' default optimizer; the
  shipped recipes set ``optim: adamw_torch``, torch's default AdamW: a loop over tensors on the CPU);
* ``fgclip-plain``: the same step on transformers' own ``sdpa`` attention, ``CLIPAttention`` and
  ``CLIPMLP`` (what the step ran before those choices);
* ``upstream-style``: the same step with upstream's text side in-process (no de-duplication,
  every text padded to 77 / 248 tokens, one call per text kind and per hard-negative group);
* ``upstream`` (with ``--upstream-src`` and ``--upstream-python``): upstream FG-CLIP v1's own
  ``FGCLIPModel.forward`` in its own environment (``bench/upstream_train_step.py``).

Printed: seconds per step (the median over ``--rounds``, each round running every variant in
turn, so that a slow spell of a shared machine hits all of them; where the machine drifts, run more
rounds rather than pick some), the ratio to upstream measured in this run (the median of the
rounds' ratios, and each round's), the FLOPs of one step (torch's FlopCounterMode), and per round
the machine's bf16 matmul rate measured just before it (``bench/rates.py``) with each variant's
achieved GFLOP/s as a fraction of that rate: a round whose rate dropped ran on a slower machine.
The load average is printed before and after: other processes on the cores slow every variant.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from fgclip import FGCLIPConfig, FGCLIPModel
from fgclip.host_memory import keep_freed_memory
from fgclip.losses import FGCLIPLoss
from fgclip.training import FGCLIPForTraining
from rates import describe_rate, matmul_gflops
from stage2_workload import collated, stage2_batch

BENCH = Path(__file__).resolve().parent
VARIANTS = ("fgclip", "fgclip-plain", "upstream-style")


class UpstreamTextStep(FGCLIPForTraining):
    """The same step with upstream's text side: no de-duplication, every slot padded to 77
    tokens, one call per text kind and one per hard-negative group."""

    def encode_short_path(self, short_input_ids, short_attention_mask, short_text_inverse, short_text_ranges, kinds):
        config = self.model.config
        width = config.short_text_length - short_input_ids.shape[1]
        slots = F.pad(short_input_ids, (0, width), value=config.text_config.eos_token_id)[short_text_inverse]
        features = {}
        for kind in kinds:
            ids = slots[slice(*short_text_ranges[kind])]
            groups = ids.split(1 + 10) if kind == "hard_negative" else [ids]
            head = "region" if kind == "hard_negative" else kind
            features[kind] = torch.cat([self.model.get_text_features(group, text_kind=head) for group in groups])
        return features


def plain_kernels(model: FGCLIPModel) -> None:
    """transformers' own modules: ``sdpa`` attention, ``CLIPAttention``, ``CLIPMLP``."""
    from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention

    model.set_attn_implementation("sdpa")
    for tower in (model.text_model, model.vision_model):
        for layer in tower.encoder.layers:
            layer.self_attn.__class__, layer.mlp.__class__ = CLIPAttention, CLIPMLP


def run_variant(variant: str, steps: int, warmup: int) -> dict:
    keep_freed_memory()  # as every CPU training run does (fgclip.training.train)
    batch = collated(stage2_batch())
    batch["short_attention_mask"] = torch.ones_like(batch["short_input_ids"])
    model = initial_model()
    if variant == "fgclip-plain":
        plain_kernels(model)
    if variant == "upstream-style":
        width = model.config.long_text_length - batch["long_input_ids"].shape[1]
        eos = model.config.text_config.eos_token_id
        batch["long_input_ids"] = F.pad(batch["long_input_ids"], (0, width), value=eos)
    step_class = UpstreamTextStep if variant == "upstream-style" else FGCLIPForTraining
    step = step_class(model, FGCLIPLoss(), regional=True, hard_negatives=True)
    # fused: transformers' default optim (adamw_torch_fused; the recipes' adamw_torch is torch's default AdamW);
    # upstream's trainer (transformers 4.41) defaults to the unfused adamw_torch, as bench/upstream_train_step.py runs.
    optimizer = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-6,
                                  betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001, fused=True)

    def one_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = step(**batch)
        output["loss"].backward()
        optimizer.step()
        return output["loss"].item()

    resident_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, losses = [], []
    for index in range(warmup + steps):
        start = time.perf_counter()
        losses.append(one_step())
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with FlopCounterMode(display=False) as counter:
        one_step()
    return {"variant": variant, "seconds_per_step": sum(times) / len(times), "losses": losses,
            "flops": counter.get_total_flops(), "peak_rss_mib": peak, "step_rise_mib": peak - resident_before}


def initial_model() -> FGCLIPModel:
    """The weights every variant starts from (upstream's too: its parameter names are ours)."""
    torch.manual_seed(0)
    return FGCLIPModel(FGCLIPConfig.vit_b16())


def run_upstream(args, directory: Path) -> dict:
    batch_file, weights_file = directory / "batch.pt", directory / "weights.safetensors"
    torch.save(stage2_batch(), batch_file)
    save_file({name: value.contiguous() for name, value in initial_model().state_dict().items()}, weights_file)
    command = [args.upstream_python, str(BENCH / "upstream_train_step.py"), str(Path(args.upstream_src).resolve()),
               str(batch_file), str(args.steps), str(args.warmup), str(weights_file)]
    return {"variant": "upstream", **run_json(command, args.threads)}


def run_json(command: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of every variant in turn; medians and per-round ratios are printed")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (AdamW state; the heap reaches its size in the second step)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--upstream-src", help="upstream FG-CLIP checkout (branch v1.0)")
    parser.add_argument("--upstream-python", help="the Python that runs the upstream code (transformers 4.41)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, JSON out
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.warmup)))
        return 0

    print(f"stage-2 step, ViT-B/16 (random weights), batch 8 x 4 boxes x (1 + 10) texts, long captions 150 tokens, "
          f"other texts 20, bf16 autocast, AdamW, {args.threads} threads; {args.warmup} warm-up + {args.steps} timed "
          f"steps; load average {os.getloadavg()[0]:.1f}")
    rounds, round_rates = [], []  # each round runs every variant once, in turn: slow spells hit all of them
    for _ in range(args.rounds):
        round_rates.append(matmul_gflops(torch.bfloat16))
        results = {}
        for variant in args.variants:
            command = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--threads", str(args.threads)]
            results[variant] = run_json(command, args.threads)
        if args.upstream_src:
            with tempfile.TemporaryDirectory() as directory:
                results["upstream"] = run_upstream(args, Path(directory))
        rounds.append(results)
    peak = max(*round_rates, matmul_gflops(torch.bfloat16))  # the best seen: load varies

    first = rounds[0]
    baseline = next(name for name in ("upstream", "upstream-style", *first) if name in first)
    seconds = {name: [r[name]["seconds_per_step"] for r in rounds] for name in first}
    ratios = {name: [b / t for b, t in zip(seconds[baseline], seconds[name])] for name in first}
    print(f"{'variant':<15} {'s/step (median)':>16} {'vs ' + baseline + ' (median)':>26} {'per round':>24} "
          f"{'first loss':>11}")
    for name, result in first.items():
        per_round = " ".join(f"{ratio:.2f}" for ratio in ratios[name])
        print(f"{name:<15} {statistics.median(seconds[name]):>16.2f} {statistics.median(ratios[name]):>25.2f}x "
              f"{per_round:>24} {result['losses'][0]:>11.4f}")
    for name, result in first.items():
        print(describe_rate(name, result["flops"], statistics.median(seconds[name]), peak))
    print("per round: bf16 matmul rate measured before it; each variant's s/step, GFLOP/s and % of that rate")
    for index, (rate, results) in enumerate(zip(round_rates, rounds)):
        cells = []
        for name, result in results.items():
            step = result["seconds_per_step"]
            achieved = first[name]["flops"] / step / 1e9
            cells.append(f"{name} {step:.2f} s {achieved:.0f} GFLOP/s {100 * achieved / rate:.0f}%")
        print(f"  round {index + 1}: {rate:.0f} GFLOP/s | " + " | ".join(cells))
    if "upstream" in first:
        print(f"upstream started from fgclip's weights; its keys left unfilled: {first['upstream']['weights_missing']}, "
              f"weights it has no key for: {first['upstream']['weights_unexpected']}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
