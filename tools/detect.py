"""Detect a custom vocabulary in one image with a trained F-ViT and draw the boxes.

    python tools/detect.py photo.jpg --vocab "cat,red cup,traffic cone" \
        --config configs/fvit_fgclip_b16.py --checkpoint work_dirs/fvit_fgclip_b16/epoch_3.pth \
        --out photo_detections.png

The names are embedded by the detector's own frozen FG-CLIP / FG-CLIP 2 text tower, with the prompt
templates of the config's class-embedding file; the background embedding stays the trained one.
Names among the training (base) classes are scored as base classes, every other name as a
novel class (CLIP-weighted ensemble). Detections are also printed, one per line.
"""
from __future__ import annotations

import sys
from importlib import import_module

from fgclip.errors import CheckpointError, CommandParser, ConfigError, atomic_output, print_output, run_command

if __name__ == "__main__" and (status := run_command(lambda _: import_module("detection"))):
    sys.exit(status)  # mmcv or mmdet missing: one line saying to run `make setup-detection`
# ruff: noqa: E402
import argparse
import math
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from PIL import Image, ImageDraw

from detection.checkpoint import check_checkpoint_file, loading_checkpoint
from detection.class_embeddings import PROMPT_TEMPLATES, embed_class_names, text_encoder_of
from detection.config_file import load_config, naming_config
from fgclip.processing_fgclip import load_image
from mmdet.registry import MODELS

COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(description="Open-vocabulary detection on one image")
    parser.add_argument("image", help="input image file")
    parser.add_argument("--vocab", required=True, help='comma-separated class names, e.g. "cat,red cup"')
    parser.add_argument("--config", required=True, help="detection config used for training")
    parser.add_argument("--checkpoint", required=True, help="trained detector checkpoint (.pth)")
    parser.add_argument("-o", "--out", help="output PNG (default: <image>_detections.png next to the image)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="draw detections scoring at least this (0 to 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def build_detector(config: str, checkpoint: str, device: str) -> tuple[torch.nn.Module, Config]:
    """The detector of ``config`` with the weights of ``checkpoint``, in eval mode."""
    check_checkpoint_file(checkpoint)
    cfg = load_config(config)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    with naming_config(config):
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
    with loading_checkpoint(checkpoint):
        load_checkpoint(model, checkpoint, map_location="cpu")
    return model.to(device).eval(), cfg


def check_score_threshold(value: float) -> float:
    """``--score-thr`` as given, if it is a number in [0, 1] (NaN would silently keep nothing)."""
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"--score-thr {value}: expected a number from 0 to 1 (detection scores are probabilities)")
    return value


def set_vocabulary(model: torch.nn.Module, checkpoint: str, names: list[str], weights: str) -> list[str]:
    """Point the box head at ``names`` (embedded by the backbone's own text tower, with the processor
    of ``checkpoint``); returns the novel ones. A name embedded as NaN or inf is a
    :class:`CheckpointError` naming the detector's ``weights`` file."""
    head = model.roi_head.bbox_head
    base = {name for name, novel in zip(head.class_names, head.is_novel.tolist()) if not novel}
    novel = [name for name in names if name not in base]
    templates = head.templates or PROMPT_TEMPLATES  # those the training classes were embedded with
    embeddings = embed_class_names(text_encoder_of(model.backbone.clip, checkpoint), names, templates)
    not_finite = [name for name, row in zip(names, embeddings) if not torch.isfinite(row).all()]
    if not_finite:
        raise CheckpointError(weights, f"its text tower embeds {not_finite} as NaN or inf (diverged or corrupt weights)")
    head.set_vocabulary(names, embeddings, novel)
    return novel


def detect(model: torch.nn.Module, cfg: Config, image_path: str):
    """Run the config's test pipeline (without annotation loading) and the model on one image."""
    steps = [step for step in cfg.test_dataloader.dataset.pipeline if step["type"] != "LoadAnnotations"]
    data = Compose(steps)({"img_path": image_path, "img_id": 0})
    with torch.no_grad():
        return model.test_step(pseudo_collate([data]))[0].pred_instances


def draw(image: Image.Image, boxes, scores, labels, names: list[str]) -> Image.Image:
    """A copy of ``image`` with one coloured box and "name score" caption per detection."""
    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    width = max(2, round(max(image.size) / 300))
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        colour = COLOURS[label % len(COLOURS)]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        caption = f"{names[label]} {score:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), caption)
        text_height = bottom - top + 2
        y = y1 - text_height if y1 >= text_height else y1  # above the box, or inside it at the image top
        pen.rectangle((x1, y, x1 + right - left + 4, y + text_height), fill=colour)
        pen.text((x1 + 2, y - top + 1), caption, fill=(255, 255, 255))
    return canvas


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    score_thr = check_score_threshold(args.score_thr)
    names = [name.strip() for name in args.vocab.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"--vocab {args.vocab!r}: expected distinct, non-empty comma-separated class names")
    image = load_image(args.image)
    model, cfg = build_detector(args.config, args.checkpoint, args.device)
    novel = set(set_vocabulary(model, cfg.model.backbone.checkpoint, names, args.checkpoint))
    pred = detect(model, cfg, args.image)
    keep = pred.scores >= score_thr
    boxes, scores, labels = pred.bboxes[keep].tolist(), pred.scores[keep].tolist(), pred.labels[keep].tolist()
    lines = [f"{names[label]}\t{'novel' if names[label] in novel else 'base'}\t{score:.3f}\t" + " ".join(f"{v:.1f}" for v in box)
             for box, score, label in zip(boxes, scores, labels)]
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + "_detections.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions().get(out.suffix.lower(), "PNG")  # e.g. -o /dev/full: PNG
    with atomic_output(out, "wb") as handle:
        draw(image, boxes, scores, labels, names).save(handle, format=image_format)
    print_output("\n".join([*lines, f"{len(boxes)} detections >= {score_thr} drawn to {out}"]))
    return out


if __name__ == "__main__":
    sys.exit(run_command(main))
