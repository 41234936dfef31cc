"""The F-ViT workload of ``bench/full_size.py``: ``tools/train_det.py configs/fvit_fgclip_l14.py`` as shipped.

The model (frozen FG-CLIP ViT-L/14 at 336 px under F-ViT's pyramid, FPN, RPN and RoI head), the
896 x 896 large-scale-jitter pipeline, the optimizer and the schedule stay the config's. Stand-ins
replace what is not on this machine:

* the FG-CLIP ViT-L/14-336 checkpoint: a seeded random ``FGCLIPModel(FGCLIPConfig.vit_l14_336())``
  saved with its processor;
* the class-embedding file: written from that checkpoint by ``tools/dump_class_embeddings.py
  --config configs/fvit_fgclip_l14.py`` (the config's 65 names, CLIPSelf's 63 templates);
* OV-COCO: one noise JPEG per iteration at COCO sizes (640 x 480, 640 x 427, ...) with a few boxes
  of base classes, in ``instances_train2017.json`` laid out as OVR-CNN's
  ``instances_train2017_seen_2_65_cat.json`` (65 categories with their seen / unseen split, base
  annotations only).

``--cfg-options`` points the config at them and makes the run one CPU process of ``iterations``
steps: batch 1, data loaded in the process, one epoch over ``iterations`` images, no validation,
no checkpoint, every iteration logged on its own (``log_processor.window_size=1``), seed 0.
The module imports neither torch nor mmdet: the heavy work runs in a child,
``python bench/fvit_workload.py --prepare WORK_DIR`` (or ``--parameter-counts WORK_DIR``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/fvit_fgclip_l14.py"
SEED = 0
IMAGE_SIZES = ((640, 480), (640, 427), (480, 640), (640, 426))  # (width, height), in turn
BOXES_PER_IMAGE = 4


class Layout(NamedTuple):
    """Where the stand-ins and the run live under a work directory."""

    checkpoint: Path
    embeddings: Path
    data_root: Path
    run_dir: Path


def layout(work_dir: Path) -> Layout:
    """The :class:`Layout` of ``work_dir`` (absolute paths)."""
    work_dir = Path(work_dir).resolve()
    return Layout(work_dir / "checkpoints" / "fg-clip-large", work_dir / "embeddings" / "ov_coco_fg-clip-large.pt",
                  work_dir / "coco", work_dir / "run")


def train_argv(work_dir: Path, iterations: int) -> list[str]:
    """The training command over the stand-ins in ``work_dir``, run from the repository root."""
    if iterations < 2:
        raise ValueError(f"iterations must be >= 2 (a step after the first is timed), got {iterations}")
    paths = layout(work_dir)
    options = [
        f"model.backbone.checkpoint={paths.checkpoint}",
        f"model.roi_head.bbox_head.class_embeddings={paths.embeddings}",
        f"train_dataloader.dataset.data_root={paths.data_root}/",
        "train_dataloader.batch_size=1",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "train_cfg.max_epochs=1",
        "val_cfg=None",
        "val_dataloader=None",
        "val_evaluator=None",
        "default_hooks.logger.interval=1",
        "log_processor.window_size=1",
        "default_hooks.checkpoint.interval=-1",
        "default_hooks.checkpoint.save_last=False",
        f"randomness.seed={SEED}",
    ]
    return [sys.executable, "tools/train_det.py", CONFIG, "--work-dir", str(paths.run_dir), "--cfg-options", *options]


def child_env() -> dict[str, str]:
    """The environment for the children: the caller's, one OpenMP thread unless it says otherwise."""
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run_self(*args: str) -> str:
    """This file run as a child from the repository root; its standard output."""
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=REPO, env=child_env(), check=True,
                          stdout=subprocess.PIPE, text=True).stdout


def prepare(work_dir: Path, iterations: int = 2) -> tuple[list[str], dict[str, str], Path]:
    """Write the stand-in checkpoint, class embeddings and data under ``work_dir`` (cached: a second
    call reuses them) and return (argv, extra_env, run_dir): ``argv`` runs from the repository root
    with ``sys.executable``; ``run_dir`` is the ``--work-dir`` mmengine writes its logs under."""
    argv = train_argv(work_dir, iterations)
    if not prepared(work_dir, iterations):
        run_self("--prepare", str(Path(work_dir).resolve()), "--iterations", str(iterations))
    return argv, {}, layout(work_dir).run_dir


def prepared(work_dir: Path, iterations: int) -> bool:
    """Whether ``work_dir`` holds the checkpoint, the embeddings and data for ``iterations`` steps."""
    paths = layout(work_dir)
    annotations = paths.data_root / "annotations" / "instances_train2017.json"
    if not (paths.checkpoint.is_dir() and paths.embeddings.is_file() and annotations.is_file()):
        return False
    images = json.loads(annotations.read_text())["images"]
    return len(images) == iterations and all((paths.data_root / "train2017" / i["file_name"]).is_file() for i in images)


def seconds_per_iteration(run_dir: Path) -> float:
    """The last logged iteration's ``time`` in the newest run's ``vis_data/scalars.json``."""
    logs = sorted(Path(run_dir).glob("*/vis_data/scalars.json"))
    if not logs:
        raise FileNotFoundError(f"no */vis_data/scalars.json under {run_dir}")
    records = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    timed = [record for record in records if "time" in record]
    if len(timed) < 2:
        raise ValueError(f"{logs[-1]}: {len(timed)} timed iteration(s); a step after the first is needed")
    return float(timed[-1]["time"])


def parameter_counts(work_dir: Path) -> dict[str, int]:
    """{"trainable": ..., "frozen": ...} elements of the detector as ``tools/train_det.py`` builds it
    from the config and the options of :func:`prepare` (built on the CPU in a child; no step run)."""
    return json.loads(run_self("--parameter-counts", str(Path(work_dir).resolve())).strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the child's work
def write_checkpoint(directory: Path) -> None:
    """A seeded random FG-CLIP ViT-L/14-336 and its processor, written whole or not at all."""
    if directory.is_dir():
        return
    import torch

    from fgclip import FGCLIPConfig, FGCLIPModel, FGCLIPProcessor

    torch.manual_seed(SEED)
    config = FGCLIPConfig.vit_l14_336()
    model = FGCLIPModel(config).eval()
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    FGCLIPProcessor.for_config(config).save_pretrained(partial)
    partial.rename(directory)


def write_embeddings(checkpoint: Path, out: Path) -> None:
    """The config's class embeddings from ``checkpoint``, by ``tools/dump_class_embeddings.py``."""
    if out.is_file():
        return
    partial = out.with_name(out.stem + ".partial.pt")
    subprocess.run([sys.executable, "tools/dump_class_embeddings.py", "--config", CONFIG, "--model", str(checkpoint),
                    "--out", str(partial), "--device", "cpu"], cwd=REPO, env=child_env(), check=True)
    partial.rename(out)


def write_data(root: Path, images: int) -> None:
    """``images`` noise JPEGs in ``train2017/`` and ``annotations/instances_train2017.json``: the 65
    OV-COCO categories (ids 1-65, OVR-CNN's ``split`` field) and base-class boxes only."""
    import numpy as np
    from PIL import Image

    from detection.datasets import OV_COCO_BASE_CLASSES, OV_COCO_CLASSES, OV_COCO_NOVEL_CLASSES

    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    category_id = {name: index + 1 for index, name in enumerate(OV_COCO_CLASSES)}
    records, annotations = [], []
    for index in range(images):
        rng = np.random.default_rng([SEED, index])
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        file_name = f"{index + 1:012d}.jpg"
        if not (root / "train2017" / file_name).is_file():
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train2017" / file_name, quality=90)
        records.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for _ in range(BOXES_PER_IMAGE):
            box_w, box_h = (rng.uniform(0.1, 0.6) * side for side in (width, height))
            x, y = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1,
                "category_id": category_id[OV_COCO_BASE_CLASSES[rng.integers(len(OV_COCO_BASE_CLASSES))]],
                "bbox": [round(v, 2) for v in (x, y, box_w, box_h)], "area": round(box_w * box_h, 2), "iscrowd": 0,
            })
    categories = [{"id": category_id[name], "name": name, "supercategory": "object",
                   "split": "unseen" if name in OV_COCO_NOVEL_CLASSES else "seen"} for name in OV_COCO_CLASSES]
    content = json.dumps({"info": {"description": f"fvit_workload stand-in OV-COCO train ({images} images)"},
                          "images": records, "annotations": annotations, "categories": categories})
    (root / "annotations" / "instances_train2017.json").write_text(content + "\n")


def write_model_files(paths: Layout) -> None:
    """The stand-in checkpoint and the class embeddings made from it (each kept once written)."""
    paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    paths.embeddings.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(paths.checkpoint)
    write_embeddings(paths.checkpoint, paths.embeddings)


def prepare_here(work_dir: Path, iterations: int) -> None:
    """The stand-ins, written in this process (the child of :func:`prepare`)."""
    paths = layout(work_dir)
    write_model_files(paths)
    write_data(paths.data_root, iterations)


def count_parameters_here(work_dir: Path) -> dict[str, int]:
    """Build the detector as ``tools/train_det.py`` configures it and count its parameters."""
    import importlib.util

    write_model_files(layout(work_dir))
    spec = importlib.util.spec_from_file_location("train_det", REPO / "tools" / "train_det.py")
    train_det = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_det)
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    cfg = train_det.setup_config(train_det.parse_args(train_argv(work_dir, 2)[2:]))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    counts = {"trainable": 0, "frozen": 0}
    for parameter in model.parameters():
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", type=Path, metavar="WORK_DIR", help="write the stand-ins under WORK_DIR")
    action.add_argument("--parameter-counts", type=Path, metavar="WORK_DIR",
                        help="print the detector's trainable and frozen parameter counts as JSON")
    parser.add_argument("--iterations", type=int, default=2, help="training steps (= stand-in images)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if args.prepare:
        prepare_here(args.prepare, args.iterations)
    else:
        print(json.dumps(count_parameters_here(args.parameter_counts)))


if __name__ == "__main__":
    main()
