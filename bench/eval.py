"""The whole ``fgclip eval`` command, stage by stage, against the machine's floor (and upstream's script).

    python bench/eval.py --threads 2 --fgovd-file h_attributes_llava.jsonl          # FG-OVD, 150 items + whole file
    python bench/eval.py --threads 2 --workloads retrieval boxcls --scenes 3000
    python bench/eval.py --threads 2 $UPSTREAM --workloads fgovd-150 fgovd-hard   # with upstream's fgovd_eval.py

Workloads (``--workloads``; stand-in data written once under ``--work-dir`` and reused), all on one
random ViT-B/16 checkpoint in the upstream layout:

* ``fgovd-150``: the first 150 items of FG-CLIP's released FG-OVD hard file
  (``h_attributes_llava.jsonl``; ``--fgovd-file``, default ``data/fgovd/`` of ``--upstream-src``),
  noise JPEGs at the recorded image sizes (`bench/fgovd_workload.py`);
* ``fgovd-hard``: the whole hard file (3545 items, 1707 images); ``--max-images N`` keeps only the
  items of its first N images, for a machine where the whole file takes too long, and says so;
* ``retrieval``: ``--scenes`` shapes scenes, image <-> long caption (`bench/sample_workload.py`);
* ``boxcls``: the same scenes' objects as COCO boxes, 7 classes x 80 templates.

For each workload and precision (``--precisions``, fp32 and ``--bf16``) it runs

1. the real command (``fgclip eval --device cpu --no-progress`` and the workload's task options,
   otherwise its defaults, e.g. ``--workers``: none on the CPU) as a fresh process, timed whole:
   the best of ``--repeats``;
2. the same command with ``--workers 0`` under `bench/eval_stages.py`, which times its stages in
   one process (images read in line, so their cost shows) and counts the FLOPs of its work;
3. with ``--upstream-src`` / ``--upstream-python`` (FG-OVD workloads, once, fp32: upstream has no
   bf16) upstream FG-CLIP v1's own ``fgovd_eval.py`` as a fresh process.

The floor is the fastest any command doing this evaluation could be here:

    floor = imports + (image FLOPs + text FLOPs) / matmul rate

* imports: ``import torch, transformers, transformers.models.clip.modeling_clip`` in a fresh
  process, the best of 3 (what an FG-CLIP command cannot avoid; bench/startup.py's baseline);
* FLOPs: the model FLOPs of the work, counted by torch's FlopCounterMode in the stages run: each
  image once (region benchmarks: the blocks before the last and the last block's value path;
  retrieval: the whole tower) and each distinct text once at its own token count, no padding;
* matmul rate: the best GFLOP/s of a 2048 x 2048 product in the run's precision (float32, or
  bfloat16 for ``--bf16``) at the same thread count, measured by `bench/rates.py` in this process
  before and after the workload (the better of the two).

A second line sets the command against the floor at the *sustained* rate: the mean GFLOP/s of 10 s
of back-to-back 2048 x 2048 products, before and after the workload (the better of the two). On a
shared or power-capped machine the best of a few products lies above what any run of a minute
keeps up; the first floor is the strict one.

Nothing else counts towards the floor: no Python start, no model load, no image decoding or
resizing, no tokenizing, no elementwise work or attention beyond its matmul FLOPs. The image and
text tower stages are also set against their own part of it (their FLOPs at the matmul rate).
The load average is printed: benchmarks must run alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from fgclip.eval.cli import default_workers

from eval_stages import IMAGE_STAGES, STAGES, TEXT_STAGES
from fgovd_workload import find_accuracy, run_upstream, timed_run, upstream_flops, write_workload
from rates import matmul_gflops, sustained_gflops
from sample_workload import write_scenes
from startup import BASELINE, best_seconds

BENCH = Path(__file__).resolve().parent
WORKLOADS = ("fgovd-150", "fgovd-hard", "retrieval", "boxcls")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prepare(name: str, args) -> dict:
    """Data root, checkpoint, ``fgclip eval`` options and a one-line description of a workload."""
    work = Path(args.work_dir).expanduser()
    if name.startswith("fgovd"):
        fgovd_file = args.fgovd_file or (args.upstream_src and Path(args.upstream_src, "data/fgovd/h_attributes_llava.jsonl"))
        if not fgovd_file or not Path(fgovd_file).is_file():
            raise SystemExit(f"{name}: give --fgovd-file (FG-CLIP's data/fgovd/h_attributes_llava.jsonl) or --upstream-src")
        whole = name == "fgovd-hard"
        cap = args.max_images if whole else None
        folder = work / (f"fgovd-hard-{cap or 'all'}" if whole else "fgovd-150")
        workload = write_workload(folder, Path(fgovd_file), None if whole else 150, args.seed, cap)
        total = len(Path(fgovd_file).read_text().splitlines())
        scope = (f"the whole hard file ({total} items)" if whole and cap is None else
                 f"the items of the first {cap} images of the hard file (CAPPED: {len(workload['records'])} of "
                 f"{total} items)" if whole else "the first 150 items of the hard file")
        workload.update(options=["--tasks", "fgovd"], title=f"FG-OVD, {scope}: {len(workload['records'])} items, "
                                                            f"{len(workload['images'])} noise JPEGs at the recorded sizes")
        return workload
    checkpoint = work / "fgovd-150" / "checkpoint"
    if not checkpoint.is_dir():
        from fgovd_workload import write_model_base, write_upstream_checkpoint

        write_upstream_checkpoint(checkpoint, args.seed)
        write_model_base(work / "fgovd-150" / "clip-base")
    root = work / f"scenes-{args.scenes}"
    counts = write_scenes(root, args.scenes, args.seed)
    if name == "retrieval":
        return {"root": root, "checkpoint": checkpoint,
                "options": ["--datasets", "tsv", "--tsv-text-kind", "long"],
                "title": f"retrieval, {counts['images']} shapes scenes (224 px PNG) <-> {counts['captions']} long captions"}
    return {"root": root, "checkpoint": checkpoint, "options": ["--datasets", "coco_boxes"],
            "title": f"box classification, {counts['boxes']} boxes on {counts['images']} shapes scenes, "
                     "7 classes x 80 templates"}


def eval_arguments(workload: dict, output: Path, bf16: bool) -> list[str]:
    return ["eval", "--model", str(workload["checkpoint"]), "--data-root", str(workload["root"]),
            *workload["options"], "--output-dir", str(output), "--no-progress", "--device", "cpu",
            *(["--bf16"] if bf16 else [])]


def whole_command(workload: dict, bf16: bool, threads: int, repeats: int, scratch: Path) -> tuple[float, dict]:
    """Best wall seconds of the real command over ``repeats`` fresh processes, and its results."""
    best = float("inf")
    for repeat in range(repeats):
        output = scratch / f"command-{int(bf16)}-{repeat}"
        command = [sys.executable, "-c", "import sys; from fgclip.cli import main; sys.exit(main())",
                   *eval_arguments(workload, output, bf16)]
        seconds, _ = timed_run(command, scratch, threads)
        best = min(best, seconds)
    return best, json.loads((output / "results.json").read_text())


def stages_run(workload: dict, bf16: bool, threads: int, scratch: Path) -> tuple[float, dict, dict]:
    """Wall seconds of the instrumented command (``--workers 0``), its stage report and its results."""
    output, report = scratch / f"stages-{int(bf16)}", scratch / f"stages-{int(bf16)}.json"
    command = [sys.executable, str(BENCH / "eval_stages.py"), str(report),
               *eval_arguments(workload, output, bf16), "--workers", "0"]
    seconds, _ = timed_run(command, scratch, threads)
    return seconds, json.loads(report.read_text()), json.loads((output / "results.json").read_text())


def metrics_of(results: dict) -> str:
    """The first model's metrics of a results.json, as a short string (to check both runs agree)."""
    values = next(iter(results["results"].values()))
    return "; ".join(f"{label} " + ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()
                                             if isinstance(value, float) and key != "seconds")
                     for label, metrics in values.items())


def report(title: str, precision: str, threads: int, command_seconds: float, command_results: dict,
           stage_seconds: float, stages: dict, results: dict, imports: float, rate: float, sustained: float,
           workers: str) -> float:
    """Print one workload x precision; returns the floor."""
    flops = stages["flops"]
    image_floor, text_floor = flops["image"] / (rate * 1e9), flops["text"] / (rate * 1e9)
    floor = imports + image_floor + text_floor
    print(f"\n== {title}; {precision}; {threads} threads; load average {os.getloadavg()[0]:.1f} ==")
    print(f"work: {flops['images']} images ({flops['image'] / 1e12:.2f} TFLOP), {flops['texts']} distinct texts, "
          f"{flops['text_tokens']} tokens ({flops['text'] / 1e12:.2f} TFLOP); matmul rate {rate:.0f} GFLOP/s "
          f"({precision}, {threads} threads)")
    print(f"floor = imports {imports:.2f} s + {(flops['image'] + flops['text']) / 1e12:.2f} TFLOP at {rate:.0f} GFLOP/s "
          f"= {floor:.2f} s")
    print(f"whole command (fgclip eval, default --workers {workers}), best of the runs: {command_seconds:.2f} s = "
          f"{command_seconds / floor:.2f}x the floor")
    sustained_floor = imports + (flops["image"] + flops["text"]) / (sustained * 1e9)
    image_part, text_part = (stages["seconds"][f"{side} tower"] / (flops[side] / (sustained * 1e9))
                             for side in ("image", "text"))
    print(f"at the sustained matmul rate ({sustained:.0f} GFLOP/s over 10 s): floor {sustained_floor:.2f} s, whole "
          f"command {command_seconds / sustained_floor:.2f}x; image tower {image_part:.2f}x and text tower "
          f"{text_part:.2f}x their parts")
    stage_seconds -= stages["counting"]  # the FLOP counting after the command
    seconds = dict(stages["seconds"])
    # The floor's import baseline is a whole process: interpreter start, the imports, exit.
    start_imports = "Python start and exit + imports: torch + transformers"
    seconds[start_imports] = stage_seconds - stages["total"] + seconds.pop(STAGES[0])
    floors = {start_imports: imports, "image tower": image_floor, "text tower": text_floor}

    def row(name: str, value: float, floor_value: float | None = None) -> None:
        cells = f"{floor_value:>9.2f}{value / floor_value:>9.2f}" if floor_value else ""
        print(f"  {name:<54}{value:>9.2f}{100 * value / stage_seconds:>7.1f}%{cells}")

    print(f"  {'stage':<54}{'seconds':>9}{'share':>8}{'floor s':>9}{'x floor':>9}")
    for stage in (start_imports, *STAGES[1:]):
        row(stage, seconds[stage], floors.get(stage))
    row("image side (decoding .. image batching)", sum(seconds[stage] for stage in IMAGE_STAGES), image_floor)
    row("text side (tokenizing .. text batching)", sum(seconds[stage] for stage in TEXT_STAGES), text_floor)
    row("total (same command, --workers 0, stages timed)", stage_seconds, floor)
    same = "agree" if metrics_of(command_results) == metrics_of(results) else "DIFFER"
    print(f"results ({same} between the two runs): {metrics_of(command_results)}")
    return floor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=["fgovd-150", "fgovd-hard"])
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch / OpenMP threads")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole command; the best counts")
    parser.add_argument("--fgovd-file", help="FG-CLIP's data/fgovd/h_attributes_llava.jsonl")
    parser.add_argument("--max-images", type=int, help="fgovd-hard: only the items of the first N images")
    parser.add_argument("--scenes", type=int, default=3000, help="retrieval / boxcls: shapes scenes")
    parser.add_argument("--work-dir", default="~/.cache/fgclip/bench_eval", help="stand-in data, written once")
    parser.add_argument("--upstream-src", help="upstream FG-CLIP checkout (branch v1.0): time its fgovd_eval.py")
    parser.add_argument("--upstream-python", help="the Python that runs the upstream code (transformers 4.41)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workers = str(default_workers("cpu"))
    print(f"bench/eval.py: {args.threads} threads, load average {os.getloadavg()[0]:.1f} (run alone on the machine)")
    imports = best_seconds([sys.executable, "-c", BASELINE], repeats=3)
    print(f"imports baseline ({BASELINE}), best of 3 fresh processes: {imports:.2f} s")
    for name in args.workloads:
        workload = prepare(name, args)
        rates = {kind: matmul_gflops(PRECISIONS[kind]) for kind in args.precisions}
        sustained = {kind: sustained_gflops(PRECISIONS[kind]) for kind in args.precisions}
        measured = {}
        scratch = Path(tempfile.mkdtemp(prefix="bench-eval-"))
        try:
            for kind in args.precisions:
                bf16 = kind == "bf16"
                command = whole_command(workload, bf16, args.threads, args.repeats, scratch)
                measured[kind] = (*command, *stages_run(workload, bf16, args.threads, scratch))
            upstream = None
            if args.upstream_src and name.startswith("fgovd"):
                upstream = run_upstream(args.upstream_src, args.upstream_python, workload, args.threads)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rates = {kind: max(rate, matmul_gflops(PRECISIONS[kind])) for kind, rate in rates.items()}
        sustained = {kind: max(rate, sustained_gflops(PRECISIONS[kind])) for kind, rate in sustained.items()}
        for kind in args.precisions:
            report(workload["title"], kind, args.threads, *measured[kind], imports, rates[kind], sustained[kind],
                   workers)
        if upstream is not None:
            seconds, accuracy = upstream
            flops = upstream_flops(workload)
            print(f"\nupstream fgovd_eval.py (fp32), whole process: {seconds:.2f} s, accuracy {accuracy:.4f}, "
                  f"{flops / 1e12:.2f} TFLOP")
            for kind in args.precisions:
                ours = measured[kind][0]
                print(f"  fgclip eval ({kind}): {ours:.2f} s, accuracy {find_accuracy(measured[kind][1]):.4f}: "
                      f"{seconds / ours:.2f}x upstream's speed")
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
