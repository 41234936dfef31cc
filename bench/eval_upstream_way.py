"""Throughput of the evaluation suite next to the upstream scripts' way of working.

FG-OVD items/s and box-classification boxes/s at the ViT-B/16 configuration (random weights),
measured in one run for

* ours: :class:`fgclip.eval.FeatureExtractor` -- batched images, one backbone pass per image for
  all its boxes, each distinct caption encoded once, captions batched by length;
* upstream way, as FG-CLIP's ``fgovd_eval.py`` works: one image per forward and one backbone
  pass per box -- the whole vision tower with ``output_hidden_states=True``, then the value
  path on ``hidden_states[-2]`` and RoIAlign, as upstream ``get_image_box_roi_features`` does;
  FG-OVD encodes each item's positive and negatives padded to 77 tokens.

Both read the same JPEG files (640x480 noise) from disk and run in the same precision. The
box-classification classifier (class-prompt embeddings) is computed once before timing and
shared, so boxes/s measures the image side. FG-OVD captions are all distinct, the least
favourable case for the caption cache: FG-OVD end to end is then bounded by caption encoding,
which batching cannot remove (upstream's 77-token padding is its only waste there); the time
split is printed with the ratios.

    python bench/eval_upstream_way.py                     # 8 images x 10 boxes, best of 2
    python bench/eval_upstream_way.py --images 16 --repeats 3 --threads 2 --bf16

The whole ``fgclip eval`` command against the machine's floor and against upstream's own script
is ``bench/eval.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fgclip import FGCLIPConfig, FGCLIPModel, FGCLIPProcessor
from fgclip.eval.boxcls import BoxClassificationSet, evaluate_boxcls
from fgclip.eval.common import RegionRequests
from fgclip.eval.features import FeatureExtractor
from fgclip.eval.fgovd import FGOVDBenchmark, FGOVDItem, evaluate_fgovd
from fgclip.encoders import Encoder
from fgclip.eval.templates import IMAGENET_TEMPLATES
from fgclip.eval.zeroshot import build_classifier

COLORS = ["black", "white", "red", "dark blue", "light green", "yellow", "grey", "brown", "pink", "orange"]
MATERIALS = ["plastic", "metal", "wooden", "leather", "glass", "wool", "velvet", "ceramic"]
OBJECTS = ["telephone", "laptop", "chair", "mug", "backpack", "umbrella", "bottle", "clock"]
PARTS = ["buttons", "handle", "legs", "strap", "bezel", "lid", "logo", "base"]


def caption(rng: random.Random) -> str:
    """An FG-OVD-like caption (about 15 words, like the real ones)."""
    return (f"A {rng.choice(COLORS)} {rng.choice(MATERIALS)} {rng.choice(OBJECTS)} with {rng.choice(COLORS)} "
            f"{rng.choice(PARTS)} and a {rng.choice(COLORS)} {rng.choice(MATERIALS)} {rng.choice(PARTS)}.")


def make_images(directory: Path, count: int, boxes_per_image: int, seed: int) -> list[tuple[str, list]]:
    """``count`` 640x480 noise JPEGs, each with ``boxes_per_image`` random xyxy boxes."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        path = directory / f"{index:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        boxes = []
        for _ in range(boxes_per_image):
            x1, y1 = rng.uniform(0, 500), rng.uniform(0, 360)
            boxes.append((x1, y1, x1 + rng.uniform(20, 140), y1 + rng.uniform(20, 120)))
        images.append((str(path), boxes))
    return images


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def upstream_region_feature(model, processor, image: str, box) -> torch.Tensor:
    """(1, D) region embedding of one box the upstream way: open and pre-process the image, run
    the whole vision tower keeping every hidden state, value path on ``hidden_states[-2]``."""
    batch = processor(images=[image], boxes=[torch.tensor([box])])
    pixel_values, boxes = batch["pixel_values"], batch["boxes"]
    hidden_states = model.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    tokens = model.value_path_features(hidden_states[-2])
    grid = processor.image_size // model.config.vision_config.patch_size
    dense = tokens.reshape(1, grid, grid, tokens.shape[-1])
    return model.pool_regions(dense, [boxes[0].clamp(0, processor.image_size)], normalize=True)


def upstream_fgovd(model, processor, items: list[FGOVDItem]) -> tuple[float, float, float]:
    """One item at a time: one backbone pass for the box, its captions at 77 tokens.
    Returns accuracy, seconds on the image side, seconds on the text side."""
    correct, image_seconds, text_seconds = 0, 0.0, 0.0
    for item in items:
        start = time.perf_counter()
        region = upstream_region_feature(model, processor, item.image, item.box)
        middle = time.perf_counter()
        captions = processor(text=[item.positive, *item.negatives], text_kind="region", padding="max_length")
        texts = model.get_text_features(captions["input_ids"], text_kind="region", normalize=True)
        scores = (region @ texts.t())[0]
        correct += bool(scores[0] >= scores[1:].max())
        image_seconds += middle - start
        text_seconds += time.perf_counter() - middle
    return correct / len(items), image_seconds, text_seconds


def upstream_boxcls(model, processor, dataset: BoxClassificationSet, classifier: torch.Tensor) -> float:
    """One box at a time: one backbone pass, score against the shared classifier."""
    correct = 0
    for image, box, label in zip(dataset.images, dataset.boxes, dataset.labels):
        region = upstream_region_feature(model, processor, image, box)
        correct += int((region @ classifier.t()).argmax()) == label
    return correct / len(dataset.labels)


def _requests(items: list[FGOVDItem]):
    """The image requests of FG-OVD items (boxes grouped per image)."""
    regions = RegionRequests()
    for item in items:
        regions.add(item.image, item.box, item.source, item.size)
    return regions.requests()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images (each with --boxes-per-image boxes)")
    parser.add_argument("--boxes-per-image", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=10, help="FG-OVD negatives per item")
    parser.add_argument("--classes", type=int, default=80, help="box-classification classes")
    parser.add_argument("--templates", type=int, default=1, help="prompt templates per class (first N of the 80)")
    parser.add_argument("--batch-size", type=int, default=16, help="our images per forward")
    parser.add_argument("--text-batch-size", type=int, default=256, help="our texts per forward")
    parser.add_argument("--workers", type=int, default=0, help="our DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for both ways")
    parser.add_argument("--repeats", type=int, default=2, help="measure each way N times, keep the fastest")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    config = FGCLIPConfig.vit_b16()
    model = FGCLIPModel(config).eval()
    processor = FGCLIPProcessor.for_config(config)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    with tempfile.TemporaryDirectory() as directory, torch.inference_mode(), autocast:
        images = make_images(Path(directory), args.images, args.boxes_per_image, args.seed)
        items = [
            FGOVDItem(path, box, (640, 480), caption(rng), [caption(rng) for _ in range(args.negatives)], f"{path} box {k}")
            for path, boxes in images for k, box in enumerate(boxes)
        ]
        classnames = [f"object class {i}" for i in range(args.classes)]
        boxes = BoxClassificationSet("bench", directory, classnames)
        for path, image_boxes in images:
            for box in image_boxes:
                boxes.add(path, box, rng.randrange(args.classes), (640, 480), path)
        eval_model = Encoder(model, processor)

        def extractor() -> FeatureExtractor:
            return FeatureExtractor(eval_model, batch_size=args.batch_size, text_batch_size=args.text_batch_size,
                                    num_workers=args.workers, bf16=args.bf16, progress=False)

        # Warm-up of both code paths (first-call allocations), not timed.
        upstream_fgovd(model, processor, items[:1])
        extractor().encode_regions(_requests(items[: args.boxes_per_image]))
        extractor().encode_texts([items[0].positive], "region")

        benchmark = FGOVDBenchmark("bench", directory, items)
        captions = sorted({text for item in items for text in (item.positive, *item.negatives)})
        ours = extractor()
        templates = IMAGENET_TEMPLATES[: args.templates]
        classifier = build_classifier(ours, classnames, templates)  # shared, and cached in `ours`
        best: dict[str, float] = {}
        accuracy: dict = {}
        for _ in range(args.repeats):  # interleaved; the fastest of the repeats counts
            accuracy["ours_fgovd"], ours_fgovd = timed(lambda: evaluate_fgovd(extractor(), [benchmark]))
            accuracy["ours_boxcls"], ours_boxcls = timed(lambda: evaluate_boxcls(ours, boxes, templates))
            accuracy["up_boxcls"], up_boxcls = timed(lambda: upstream_boxcls(model, processor, boxes, classifier))
            (accuracy["up_fgovd"], up_regions, up_texts), up_fgovd = timed(lambda: upstream_fgovd(model, processor, items))
            measured = {
                "ours_fgovd": ours_fgovd, "ours_boxcls": ours_boxcls, "up_boxcls": up_boxcls,
                "up_fgovd": up_fgovd, "up_regions": up_regions, "up_texts": up_texts,
                "ours_captions": timed(lambda: extractor().encode_texts(captions, "region"))[1],
                "ours_regions": timed(lambda: extractor().encode_regions(_requests(items)))[1],
            }
            best = {key: min(value, best.get(key, value)) for key, value in measured.items()}

    num_items = len(items)
    rows = [
        ("FG-OVD items/s (end to end)", best["ours_fgovd"], best["up_fgovd"]),
        ("  region features only", best["ours_regions"], best["up_regions"]),
        ("box classification boxes/s", best["ours_boxcls"], best["up_boxcls"]),
    ]
    print(f"ViT-B/16 random weights, CPU, {torch.get_num_threads()} threads, {'bf16' if args.bf16 else 'fp32'}; "
          f"{args.images} images x {args.boxes_per_image} boxes, {args.negatives} negatives per FG-OVD item, "
          f"best of {args.repeats}")
    print(f"{'':32s}{'ours':>12s}{'upstream way':>15s}{'ratio':>9s}")
    for name, ours_seconds, upstream_seconds in rows:
        print(f"{name:32s}{num_items / ours_seconds:12.2f}{num_items / upstream_seconds:15.2f}"
              f"{upstream_seconds / ours_seconds:8.1f}x")
    print(f"FG-OVD time split: upstream images {best['up_regions']:.1f}s, captions {best['up_texts']:.1f}s "
          f"({num_items * (1 + args.negatives)} at 77 tokens); ours captions {best['ours_captions']:.1f}s "
          f"({len(captions)} distinct, padded per length-sorted batch)")
    print(f"accuracy, ours / upstream way (same weights, must agree): FG-OVD "
          f"{accuracy['ours_fgovd']['bench']['accuracy']:.4f} / {accuracy['up_fgovd']:.4f}, box top-1 "
          f"{accuracy['ours_boxcls']['top1']:.4f} / {accuracy['up_boxcls']:.4f}")


if __name__ == "__main__":
    main()
