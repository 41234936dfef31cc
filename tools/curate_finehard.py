"""Curate an image folder into FineHARD records (FG-CLIP Sec. 3.2): a VLM writes the captions and
region descriptions, spaCy parses referring expressions, an open-vocabulary detector grounds
them (confidence > 0.4, NMS), an LLM writes 10 hard negatives per region. Resumable: rerun
the same command after an interruption. Split a large folder over GPUs with --shard. A bad input
prints ``error: <file>: <what>`` and exits with status 2; --skip-errors counts and skips bad images.

    python tools/curate_finehard.py --images data/raw --output data/curated.jsonl \\
        --vlm Qwen/Qwen2-VL-7B-Instruct --detector google/owlv2-base-patch16-ensemble \\
        --llm meta-llama/Llama-3.1-8B-Instruct --device cuda --shard 0/8
"""
from __future__ import annotations

import argparse
import logging
import os

from fgclip.curation import LLMNegativeWriter, PipelineGrounder, SpacyExpressionParser, VLMCaptioner, curate, find_images
from fgclip.errors import CommandParser, DataError, check_output_file, run_command


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard is INDEX/COUNT, e.g. 0/8, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= INDEX < COUNT")
    return index, count


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder (searched recursively); f_path is relative to it")
    parser.add_argument("--output", required=True, help="JSONL file the records are appended to")
    parser.add_argument("--vlm", default="Qwen/Qwen2-VL-7B-Instruct", help="image-text-to-text model")
    parser.add_argument("--detector", default="google/owlv2-base-patch16-ensemble",
                        help="zero-shot-object-detection model")
    parser.add_argument("--llm", default="meta-llama/Llama-3.1-8B-Instruct", help="text-generation chat model")
    parser.add_argument("--spacy", default="en_core_web_sm", help="spaCy pipeline with a dependency parser")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: transformers' choice)")
    parser.add_argument("--threshold", type=float, default=0.4, help="detector confidence to keep a box")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU between the regions of an image")
    parser.add_argument("--max-regions", type=int, default=8, help="regions kept per image")
    parser.add_argument("--no-region-descriptions", action="store_true",
                        help="long_expr = the expression's parse subtree instead of a VLM description")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="INDEX/COUNT",
                        help="curate images INDEX, INDEX + COUNT, ... (one process per GPU)")
    parser.add_argument("--skip-errors", action="store_true", help="count and skip images that fail")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    index, count = args.shard
    if not os.path.isdir(args.images):  # before any model loads
        raise DataError(args.images, "--images: image folder not found")
    images = find_images(args.images)
    if not images:
        raise DataError(args.images, "--images: no image files in this folder (searched recursively)")
    images = images[index::count]
    check_output_file(args.output, "--output")
    stats = curate(
        images, args.images, args.output,
        VLMCaptioner(args.vlm, device=args.device), SpacyExpressionParser(args.spacy, max_expressions=None),
        PipelineGrounder(args.detector, device=args.device), LLMNegativeWriter(args.llm, device=args.device),
        skip_errors=args.skip_errors, threshold=args.threshold, iou_threshold=args.iou, max_regions=args.max_regions,
        describe_regions=not args.no_region_descriptions,
    )
    print(stats.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
