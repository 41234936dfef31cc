"""Retrieval and box-classification stand-ins for ``bench/eval.py``: shapes scenes
(:mod:`fgclip.data.shapes`, 224 px PNGs) in the layouts ``fgclip eval`` reads, written once and reused.

* retrieval: ``tsv/shapes.tsv``, one ``image<TAB>long caption`` line per scene (``--datasets tsv
  --tsv-text-kind long``);
* box classification: ``coco/annotations/instances_val2017.json``, every object of every scene a box
  of one of the 7 shape classes (``--datasets coco_boxes``; 80 templates per class).

Both read the same images (``coco/val2017``; hard links under ``tsv/images``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fgclip.data.shapes import SHAPES, render_scene, scene_captions, scene_rng


def write_scenes(root: Path, scenes: int, seed: int) -> dict:
    """The data root for ``scenes`` scenes; returns its counts."""
    ready = root / "ready.json"
    setting = {"scenes": scenes, "seed": seed}
    if ready.is_file() and json.loads(ready.read_text())["setting"] == setting:
        return json.loads(ready.read_text())
    images_dir, tsv_images = root / "coco" / "val2017", root / "tsv" / "images"
    for directory in (images_dir, tsv_images, root / "coco" / "annotations"):
        directory.mkdir(parents=True, exist_ok=True)
    category = {shape: index + 1 for index, shape in enumerate(SHAPES)}
    images, annotations, lines = [], [], []
    for index in range(scenes):
        scene = render_scene(scene_rng(seed, "bench", index), 224)
        name = f"{index:012d}.png"
        scene.image.save(images_dir / name)
        if not (tsv_images / name).exists():
            os.link(images_dir / name, tsv_images / name)
        lines.append(f"images/{name}\t{scene_captions(scene)[0]}")
        images.append({"id": index + 1, "file_name": name, "width": 224, "height": 224,
                       "coco_url": f"http://images.cocodataset.org/val2017/{name}"})
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category[obj.shape],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": obj.area, "iscrowd": 0})
    (root / "tsv" / "shapes.tsv").write_text("\n".join(lines) + "\n")
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": shape} for shape, i in category.items()]}
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    summary = {"setting": setting, "images": scenes, "captions": len(lines), "boxes": len(annotations)}
    ready.write_text(json.dumps(summary))
    return summary
