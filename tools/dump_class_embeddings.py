"""Embed class names with FG-CLIP's text tower (prompt-template ensemble) and save them for F-ViT.

    # the vocabulary, model and output file of a detection config
    python tools/dump_class_embeddings.py --config configs/fvit_fgclip_b16.py
    # any vocabulary
    python tools/dump_class_embeddings.py --model checkpoints/fg-clip-base \
        --vocab "cat,red cup,traffic cone" --out data/embeddings/my_vocab.pt

Each name fills every template (default: CLIPSelf's 63 prompts, ``--templates clipself``;
``--templates fgclip`` for FG-CLIP's short prompts, ``--templates-file`` for your own); the
normalised text embeddings are averaged over the templates and normalised again. The word
"background" goes through the same templates and is stored as the background embedding. The
file holds the class names, the (C, D) embeddings, the (D,) background, the templates and the
model path (see ``detection.class_embeddings``).
"""
from __future__ import annotations

import sys
from importlib import import_module

from fgclip.errors import CommandParser, ConfigError, DataError, run_command

if __name__ == "__main__" and (status := run_command(lambda _: import_module("detection"))):
    sys.exit(status)  # mmcv or mmdet missing: one line saying to run `make setup-detection`
# ruff: noqa: E402
import argparse
from pathlib import Path

import torch

from detection.class_embeddings import BACKGROUND, TEMPLATE_SETS, check_templates, embed_class_names, save_class_embeddings
from detection.config_file import load_config
from fgclip.encoders import load_encoder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="detection config: default vocabulary (bbox_head.class_names), "
                        "model (backbone.checkpoint) and output (bbox_head.class_embeddings)")
    parser.add_argument("--model", help="FG-CLIP checkpoint directory or hub id")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help='comma-separated class names, e.g. "cat,red cup"')
    vocab.add_argument("--vocab-file", help="text file with one class name per line")
    templates = parser.add_mutually_exclusive_group()
    templates.add_argument("--templates", choices=sorted(TEMPLATE_SETS), default="clipself", help="named template set: clipself (CLIPSelf's 63 prompts, the default) or fgclip (FG-CLIP's 20 short ones)")
    templates.add_argument("--templates-file", help="text file with one prompt template per line, '{}' = class name, "
                           "optionally '{article}' = a / an")
    parser.add_argument("-o", "--out", help="output .pt file")
    parser.add_argument("--batch-size", type=int, default=256, help="prompts per text-tower call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def read_lines(path: str, what: str) -> list[str]:
    """Non-empty stripped lines of ``path``; a :class:`DataError` names the file if it is missing,
    not UTF-8 text or holds none."""
    if not Path(path).is_file():
        raise DataError(path, f"{what} file not found")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason} at byte {error.start}); expected {what}, one per line") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(path, f"no {what} (one per line expected)")
    return lines


def resolve(args: argparse.Namespace) -> tuple[list[str], str, str]:
    """(class names, model path, output path) from the flags, falling back on ``--config``."""
    names = model = out = None
    if args.config:
        cfg = load_config(args.config)
        try:
            head = cfg.model.roi_head.bbox_head
            names = list(head.get("class_names") or cfg.test_dataloader.dataset.metainfo.classes)
            model, out = cfg.model.backbone.checkpoint, head.class_embeddings
        except (AttributeError, KeyError) as error:
            raise ConfigError(args.config, f"not an F-ViT detection config ({error}); give --vocab, --model and --out instead") from None
    if args.vocab:
        names = [name.strip() for name in args.vocab.split(",") if name.strip()]
    elif args.vocab_file:
        names = read_lines(args.vocab_file, "class names")
    model, out = args.model or model, args.out or out
    missing = [flag for flag, value in (("--vocab/--vocab-file", names), ("--model", model), ("--out", out)) if not value]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}: give them, or a --config that defines them")
    source = "--vocab" if args.vocab else args.vocab_file or args.config
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(source, f"duplicate class names {duplicates}")
    if BACKGROUND in names:
        raise ConfigError(source, f"{BACKGROUND!r} is not a class name: it is embedded as the background row")
    return names, model, out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names, model_path, out = resolve(args)
    if args.templates_file:
        templates = read_lines(args.templates_file, "prompt templates")
        check_templates(templates, args.templates_file)
    else:
        templates = list(TEMPLATE_SETS[args.templates])
    model = load_encoder(model_path, device=args.device)
    embeddings = embed_class_names(model, [*names, BACKGROUND], templates, batch_size=args.batch_size)
    save_class_embeddings(out, names, embeddings[:-1], templates, model_path, background=embeddings[-1])
    print(f"wrote {len(names)} x {embeddings.shape[1]} embeddings + background ({len(templates)} templates) to {out}",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_command(main))
