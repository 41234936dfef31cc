"""Stage-2 training step at the ViT-B/16 configuration on the CPU: throughput, peak memory
and text-encoder calls, against an upstream-style text side in the same run.

    python bench/train_step.py                     # fgclip and upstream, 1 warm-up + 1 timed step each
    python bench/train_step.py --steps 3 --variants fgclip one-call upstream

Setting: ``FGCLIPConfig.vit_b16()`` with random weights (seed 0); a batch of 8 synthetic
shapes scenes (224 px, FineHARD records through `FineHARDDataset` and `FineHARDCollator`)
with 4 boxes each, every box with 10 hard negatives; L = L_global + 0.1 L_regional +
0.5 L_hard; forward under ``torch.autocast("cpu", torch.bfloat16)``, backward, then an
AdamW step on float32 weights. The image side (one vision pass, RoIAlign) is the same in
every variant; only the text side differs:

* ``fgclip``: `FGCLIPForTraining` -- one text-tower call for the long captions and one for
  all short-path texts (short captions, region captions, positives and negatives),
  de-duplicated, each padded to the longest text of its call;
* ``one-call``: the same two calls without de-duplication (isolates what de-duplication
  buys; the shapes scenes repeat texts more often than real FineHARD data does);
* ``upstream``: every text kind encoded separately and padded to its full length, as
  upstream FG-CLIP does -- long captions (248 tokens), short captions, region captions,
  and each region's group of 1 + 10 hard-negative texts (77 tokens): 3 + 32 calls.

Each variant runs in its own process, so that its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``: model, AdamW state, activations and
allocator caches) is its own; "step rise" is that peak minus the resident set just before
the first step. Text-encoder calls and tokens are counted by a forward pre-hook on the
text transformer. Reference: upstream FG-CLIP v1's own step takes about 80 s on this
2-core machine (REFERENCE section 2). The load average is printed before and after: other
processes on the 2 cores slow every variant and make single steps noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fgclip import FGCLIPConfig, FGCLIPModel, FGCLIPProcessor
from fgclip.data import FineHARDCollator, FineHARDDataset
from fgclip.data.shapes import write_shapes_dataset
from fgclip.losses import FGCLIPLoss
from fgclip.training import FGCLIPForTraining

VARIANTS = ("fgclip", "one-call", "upstream")
BOXES = 4


class UpstreamTextStep(FGCLIPForTraining):
    """The same step with upstream's text side: no de-duplication, every slot padded to 77
    tokens, one call per text kind and one per hard-negative group."""

    def encode_short_path(self, short_input_ids, short_text_inverse, short_text_ranges, kinds):
        config = self.model.config
        width = config.short_text_length - short_input_ids.shape[1]
        slots = F.pad(short_input_ids, (0, width), value=config.text_config.eos_token_id)[short_text_inverse]
        features = {}
        for kind in kinds:
            ids = slots[slice(*short_text_ranges[kind])]
            groups = ids.split(1 + 10) if kind == "hard_negative" else [ids]
            features[kind] = torch.cat([self.model.get_text_features(group, kind="short") for group in groups])
        return features


def scenes_with_boxes(directory: Path, count: int) -> Path:
    """A FineHARD file of `count` shapes scenes with exactly BOXES objects each."""
    records, seed = [], 0
    while len(records) < count:
        out = directory / f"seed{seed}"
        write_shapes_dataset(out, seed=seed, num_train=4 * count, num_test=1, image_size=224)
        for line in (out / "train.jsonl").read_text().splitlines():
            record = json.loads(line)
            if len(record["bbox_info"]) == BOXES and len(records) < count:
                records.append({**record, "f_path": f"seed{seed}/{record['f_path']}"})
        seed += 1
    path = directory / "bench.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(variant: str, batch_size: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    config = FGCLIPConfig.vit_b16()
    model = FGCLIPModel(config)
    processor = FGCLIPProcessor.for_config(config)
    with tempfile.TemporaryDirectory() as directory:
        records = scenes_with_boxes(Path(directory), batch_size)
        dataset = FineHARDDataset(records, directory, processor.preprocess, max_boxes=BOXES, seed=0)
        batch = FineHARDCollator(processor.tokenize)([dataset[index] for index in range(batch_size)])
    slots = batch["short_text_inverse"].numel()
    if variant == "one-call":
        batch["short_input_ids"] = batch["short_input_ids"][batch["short_text_inverse"]]
        batch["short_text_inverse"] = torch.arange(slots)
    if variant == "upstream":
        width = config.long_text_length - batch["long_input_ids"].shape[1]
        batch["long_input_ids"] = F.pad(batch["long_input_ids"], (0, width), value=config.text_config.eos_token_id)
    step_class = UpstreamTextStep if variant == "upstream" else FGCLIPForTraining
    step = step_class(model, FGCLIPLoss(), regional=True, hard_negatives=True)
    optimizer = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-6,
                                  betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001)
    calls: list[tuple[int, int]] = []
    model.text_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)

    resident_before = resident_mib()
    times, losses = [], []
    for index in range(warmup + steps):
        calls.clear()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = step(**batch)
        output["loss"].backward()
        optimizer.step()
        losses.append(output["loss"].item())
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "variant": variant,
        "seconds_per_step": sum(times) / len(times),
        "samples_per_second": batch_size * len(times) / sum(times),
        "peak_rss_mib": peak,
        "step_rise_mib": peak - resident_before,
        "text_calls": len(calls),
        "text_rows": sum(rows for rows, _ in calls),
        "text_tokens": sum(rows * width for rows, width in calls),
        "text_slots": batch_size + slots,
        "first_loss": losses[0],
        "loss_dtype": str(output["loss"].dtype),
        "term_dtypes": sorted({str(value.dtype) for value in output["terms"].values()}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (AdamW state, allocator)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["fgclip", "upstream"])
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, JSON out
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch, args.steps, args.warmup)))
        return 0

    print(f"stage-2 step, ViT-B/16 (random weights), batch {args.batch} x {BOXES} boxes x 10 negatives, "
          f"bf16 autocast, AdamW, {args.threads} threads; {args.warmup} warm-up + {args.steps} timed steps; "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        results[variant] = json.loads(run.stdout.strip().splitlines()[-1])

    header = (f"{'variant':<10} {'s/step':>8} {'samples/s':>10} {'peak RSS MiB':>13} {'step rise MiB':>14} "
              f"{'text calls':>11} {'text rows':>10} {'text tokens':>12} {'first loss':>11}")
    print(header)
    for result in results.values():
        print(f"{result['variant']:<10} {result['seconds_per_step']:>8.2f} {result['samples_per_second']:>10.3f} "
              f"{result['peak_rss_mib']:>13.0f} {result['step_rise_mib']:>14.0f} {result['text_calls']:>11d} "
              f"{result['text_rows']:>10d} {result['text_tokens']:>12d} {result['first_loss']:>11.4f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    any_result = next(iter(results.values()))
    print(f"text slots per step: {any_result['text_slots']} (long + short + region + hard-negative texts); "
          f"loss {any_result['loss_dtype']}, terms {', '.join(any_result['term_dtypes'])}")
    if "fgclip" in results and "upstream" in results:
        ratio = results["upstream"]["seconds_per_step"] / results["fgclip"]["seconds_per_step"]
        print(f"fgclip step is {ratio:.2f}x faster than the upstream-style text side")
    return 0


if __name__ == "__main__":
    sys.exit(main())
