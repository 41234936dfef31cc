"""Command line of the evaluation suite: ``tools/eval_fgclip.py`` and ``fgclip eval``.

    python tools/eval_fgclip.py --model PATH --tasks fgovd,boxcls,retrieval,zeroshot --data-root DIR
    torchrun --nproc_per_node 8 tools/eval_fgclip.py --model fgclip=PATH --model clip=CLIP_PATH ...

:func:`add_eval_subcommand` registers the same arguments as an ``eval`` sub-command of
another parser; :func:`run_eval` runs a parsed namespace.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Sequence

from ..errors import CheckpointError, CommandParser, ConfigError, check_output_dir, run_command
from ..families import model_type_choices
from ..names import EVAL_TASKS as TASKS

DESCRIPTION = (
    "Evaluate FG-CLIP (and plain CLIP baselines) on FG-OVD, box classification, retrieval and "
    "zero-shot classification; writes results.json and results.md."
)


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _at_least(smallest: int):
    """An argparse type: an integer >= ``smallest``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < smallest:
            raise argparse.ArgumentTypeError(f"expected an integer >= {smallest}, got {number}")
        return number
    return parse


def _task_list(value: str) -> list[str]:
    tasks = _comma_list(value)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")
    return tasks


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to ``parser``."""
    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                        help="checkpoint directory; repeat to evaluate models side by side")
    parser.add_argument("--model-type", choices=model_type_choices(), default="auto",
                        help="a model family (fgclip, fgclip2, clip: the plain transformers CLIP baseline, or a "
                             "registered one) or auto-detect (default)")
    parser.add_argument("--tasks", type=_task_list, default=list(TASKS),
                        help=f"comma-separated tasks (default: {','.join(TASKS)})")
    parser.add_argument("--datasets", type=_comma_list, default=None,
                        help="comma-separated benchmark names (see --list-datasets); absent files are then errors")
    parser.add_argument("--data-root", default=None, help="root of the benchmark layout (see --list-datasets)")
    parser.add_argument("--path", action="append", default=[], metavar="DATASET.KEY=PATH",
                        help="override one path of the layout, e.g. coco_boxes.ann=/data/instances_val2017.json")
    parser.add_argument("--output-dir", default="eval_results", help="where results.json and results.md go")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--batch-size", type=_at_least(1), default=64, help="images per forward pass")
    parser.add_argument("--text-batch-size", type=_at_least(1), default=256, help="texts per forward pass")
    parser.add_argument("--workers", type=_at_least(0), default=None,
                        help="DataLoader workers reading images (default: none on the CPU, whose cores the "
                             "towers use; elsewhere 4, at most the cores this process may use)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (GPUs; CPUs with AVX512-BF16 or AMX run it about twice as fast); "
                             "default float32, recorded in results.json")
    parser.add_argument("--fgovd-subsets", type=_comma_list, default=None,
                        help="FG-OVD subsets to run (default: every subset file found)")
    parser.add_argument("--max-captions", type=_at_least(1), default=5,
                        help="captions kept per image for COCO / Flickr30k (0: all)")
    parser.add_argument("--tsv-text-kind", choices=("short", "long"), default="short",
                        help="text path of image<TAB>caption files")
    parser.add_argument("--templates", default="openai",
                        help="box / zero-shot classification prompts: openai (80), zh (Chinese) or a file with one "
                             "template per line ('{}' = class name)")
    parser.add_argument("--reranker", action="append", default=[], metavar="[NAME=]PATH",
                        help="cross-encoder re-ranker (fgclip.rerank) for a model's retrieval; NAME picks the model "
                             "when several are given")
    parser.add_argument("--rerank-top-k", type=_at_least(1), default=128, help="dual-encoder candidates each query re-ranks")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept image paths in benchmark files that are absolute or leave the image root")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--list-datasets", action="store_true", help="print the expected layout and exit")
    return parser


def add_eval_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on an ``argparse`` sub-parser collection; it runs :func:`run_eval`."""
    parser = subparsers.add_parser("eval", help="evaluate models on the FG-CLIP benchmarks", description=DESCRIPTION)
    add_eval_arguments(parser)
    parser.set_defaults(func=run_eval)
    return parser


def _model_entries(specs: Sequence[str], model_type: str, device) -> list:
    from ..encoders import detect_model_type, load_encoder

    entries, names = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if not Path(path).is_dir():
            raise CheckpointError(f"--model {spec}: checkpoint directory not found: {path}")
        base, count = name, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.add(name)
        kind = detect_model_type(path) if model_type == "auto" else model_type
        entries.append((name, lambda path=path, kind=kind: load_encoder(path, kind, device),
                        {"path": str(path), "type": kind}))
    return entries


def _reranker_paths(specs: Sequence[str], model_names: list[str]) -> dict[str, str]:
    """``--reranker [NAME=]PATH`` values -> {model name: re-ranker directory}."""
    paths = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(model_names) != 1:
                raise ConfigError(f"--reranker {spec}: name the model (NAME=PATH), one of {', '.join(model_names)}")
            name, path = model_names[0], spec
        if name not in model_names:
            raise ConfigError(f"--reranker {spec}: no model named {name!r} (models: {', '.join(model_names)})")
        if not Path(path).is_dir():
            raise CheckpointError(f"--reranker {spec}: re-ranker directory not found: {path}")
        paths[name] = path
    return paths


def default_workers(device_type: str) -> int:
    """DataLoader workers when ``--workers`` is not given. On the CPU none: the towers' threads use
    every core, and workers decoding beside them slowed a bf16 FG-OVD run on 2 cores by 10%
    (docs/benchmarks.md) while decoding in line costs about 3%. Elsewhere the device computes and
    up to 4 workers decode the next images meanwhile."""
    return 0 if device_type == "cpu" else min(4, len(os.sched_getaffinity(0)))


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation described by parsed arguments (see :func:`add_eval_arguments`)."""
    import torch
    import torch.distributed as dist

    from ..distributed import get_rank
    from ..encoders import resolve_device
    from ..host_memory import keep_freed_memory
    from .runner import EvalOptions, RunConfig, describe_layout, markdown_table, parse_path_overrides, run_evaluation

    if args.list_datasets:
        print(describe_layout(args.data_root))
        return 0
    if not args.model:
        raise ConfigError("fgclip eval: give at least one --model")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise ConfigError(f"--data-root {args.data_root}: directory not found")
    check_output_dir(args.output_dir, "--output-dir")
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()
    workers = default_workers(device.type) if args.workers is None else args.workers
    started_group = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        started_group = True
    logging.basicConfig(level=logging.INFO if get_rank() == 0 else logging.WARNING, format="%(message)s")
    try:
        config = RunConfig(
            data_root=args.data_root,
            output_dir=args.output_dir,
            tasks=args.tasks,
            datasets=args.datasets,
            overrides=parse_path_overrides(args.path),
            options=EvalOptions(
                fgovd_subsets=args.fgovd_subsets,
                max_captions=args.max_captions or None,
                tsv_text_kind=args.tsv_text_kind,
                templates=args.templates,
                allow_outside_root=args.allow_outside_root,
            ),
            batch_size=args.batch_size,
            text_batch_size=args.text_batch_size,
            num_workers=workers,
            bf16=args.bf16,
            progress=not args.no_progress,
            rerank_top_k=args.rerank_top_k,
        )
        entries = _model_entries(args.model, args.model_type, device)
        config.rerankers = _reranker_paths(args.reranker, [name for name, _, _ in entries])
        report = run_evaluation(entries, config)
        if get_rank() == 0:
            print(markdown_table(report), end="")
            print(f"wrote {Path(args.output_dir, 'results.json')} and {Path(args.output_dir, 'results.md')}")
    finally:
        if started_group:
            dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/eval_fgclip.py``: an input error prints one line and gives status 2."""
    parser = add_eval_arguments(CommandParser(description=DESCRIPTION))
    return run_command(lambda arguments: run_eval(parser.parse_args(arguments)), argv)
