"""Box classification: name each ground-truth box from its region embedding.

Each box's region embedding is scored against class embeddings built from prompt-template
ensembles (the 80 OpenAI ImageNet templates by default); top-1 and top-5 accuracy over all
boxes (REFERENCE section 4). Every annotated box counts, crowd boxes included, as upstream.

Readers:

* COCO-format detection json (``instances_val2017.json``) through pycocotools; class names
  are the categories' ``name``.
* LVIS v1 (``lvis_v1_val.json``) through the same COCO API (the ``lvis`` package's evaluator
  needs numpy < 2); images are found from ``coco_url`` (``val2017/...`` or ``train2017/...``
  under the COCO root) and underscores in class names become spaces.
* Open Images box CSVs: ``ImageID, LabelName, XMin, XMax, YMin, YMax`` (fractions of the image
  size) plus the class-description CSV (``LabelName, DisplayName``, header optional) whose
  order gives the classes; images are ``<image root>/<ImageID>.jpg``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from pycocotools.coco import COCO

from .spec import Prepared, ScoreContext, single
from .common import (
    DataError,
    RegionRequests,
    coco_image_path,
    image_size_of,
    read_json,
    require,
    resolve_image,
    xywh_to_xyxy,
)
from .features import FeatureExtractor
from .metrics import classification_ranks, topk_from_ranks
from .templates import IMAGENET_TEMPLATES
from .zeroshot import build_classifier

OPENIMAGES_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


@dataclass
class BoxClassificationSet:
    """Boxes with class labels.

    Args:
        images / boxes / labels / sizes / sources: one entry per box; ``boxes`` are xyxy in
            pixels, or fractions of the image size when ``normalized``.
        classnames: class names in label order.
    """

    name: str
    source: str
    classnames: list[str]
    normalized: bool = False
    images: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int] | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, image: str, box, label: int, size, source: str) -> None:
        self.images.append(image)
        self.boxes.append(box)
        self.labels.append(label)
        self.sizes.append(size)
        self.sources.append(source)


def load_coco_boxes(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    name: str = "coco",
    classname: Callable[[dict], str] = lambda category: category["name"], allow_outside_root: bool = False,
) -> BoxClassificationSet:
    """Read a COCO-format detection json (COCO, LVIS v1) into boxes and labels."""
    data = read_json(annotation_file)
    if not isinstance(data, dict):
        raise DataError(f"{annotation_file}: expected an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        require(data, key, str(annotation_file), list)
    for index, category in enumerate(data["categories"]):
        where = f"{annotation_file} categories[{index}]"
        require(category, "id", where)
        require(category, "name", where, str)
    for index, image in enumerate(data["images"]):
        require(image, "id", f"{annotation_file} images[{index}]")
    for index, annotation in enumerate(data["annotations"]):
        for key in ("id", "image_id", "category_id", "bbox"):
            require(annotation, key, f"{annotation_file} annotations[{index}]")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    if len(coco.anns) != len(data["annotations"]):
        seen = set()
        for index, annotation in enumerate(data["annotations"]):
            if annotation["id"] in seen:
                raise DataError(f"{annotation_file} annotations[{index}]: duplicate annotation id {annotation['id']!r}")
            seen.add(annotation["id"])
    category_ids = coco.getCatIds()
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    classnames = [classname(category) for category in coco.loadCats(category_ids)]
    dataset = BoxClassificationSet(name, str(annotation_file), classnames)
    position = {id(annotation): index for index, annotation in enumerate(data["annotations"])}
    resolved = {}
    for annotation in coco.loadAnns(coco.getAnnIds()):
        where = f"{annotation_file} annotations[{position[id(annotation)]}] (id {annotation['id']})"
        image_id, category_id = annotation["image_id"], annotation["category_id"]
        if image_id not in coco.imgs:
            raise DataError(f"{where}: unknown image_id {image_id!r} (not in 'images')")
        if category_id not in label_of:
            raise DataError(f"{where}: unknown category_id {category_id!r} (not in 'categories')")
        image = coco.imgs[image_id]
        image_where = f"{annotation_file} image id {image_id}"
        size = image_size_of(image, image_where)
        box = xywh_to_xyxy(annotation["bbox"], where, size)
        if image_id not in resolved:
            resolved[image_id] = resolve_image(image_root, coco_image_path(image, image_where), image_where,
                                               allow_outside_root=allow_outside_root)
        dataset.add(resolved[image_id], box, label_of[category_id], size, where)
    if not dataset.labels:
        raise DataError(f"{annotation_file}: no annotations")
    return dataset


def lvis_classname(category: dict) -> str:
    """LVIS names use underscores for spaces (``"aerosol_can"`` -> ``"aerosol can"``)."""
    return category["name"].replace("_", " ")


def load_lvis_boxes(annotation_file: str | os.PathLike, image_root: str | os.PathLike,
                    allow_outside_root: bool = False) -> BoxClassificationSet:
    """LVIS v1 through the COCO API; ``image_root`` is the COCO root holding train2017/ and val2017/."""
    return load_coco_boxes(annotation_file, image_root, name="lvis", classname=lvis_classname,
                           allow_outside_root=allow_outside_root)


def read_openimages_classes(path: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Class-description CSV -> (display names, label name -> class index)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    names, index = [], {}
    with open(path, encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if line_number == 1 and row[:2] == ["LabelName", "DisplayName"]:
                continue
            if not row:
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                raise DataError(f"{path} line {line_number}: expected 'LabelName,DisplayName', got {row!r}")
            if row[0] in index:
                raise DataError(f"{path} line {line_number}: LabelName {row[0]!r} listed twice")
            index[row[0]] = len(names)
            names.append(row[1])
    if not names:
        raise DataError(f"{path}: no classes")
    return names, index


def load_openimages_boxes(
    box_file: str | os.PathLike, class_file: str | os.PathLike, image_root: str | os.PathLike,
    allow_outside_root: bool = False,
) -> BoxClassificationSet:
    """Open Images box CSV + class descriptions; boxes stay normalised until the image is read."""
    classnames, label_of = read_openimages_classes(class_file)
    if not os.path.isfile(box_file):
        raise DataError(f"{box_file}: file not found")
    dataset = BoxClassificationSet("openimages", str(box_file), classnames, normalized=True)
    resolved = {}
    with open(box_file, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in OPENIMAGES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{box_file}: missing column(s) {missing} in the header")
        for line_number, row in enumerate(reader, start=2):
            where = f"{box_file} line {line_number}"
            if row["LabelName"] not in label_of:
                raise DataError(f"{where}: LabelName {row['LabelName']!r} is not in {class_file}")
            try:
                x1, x2, y1, y2 = (float(row[c]) for c in ("XMin", "XMax", "YMin", "YMax"))
            except (TypeError, ValueError) as error:
                raise DataError(f"{where}: XMin/XMax/YMin/YMax must be numbers ({error})") from error
            tolerance = 1e-6
            if not all(map(math.isfinite, (x1, x2, y1, y2))) or not (
                -tolerance <= x1 < x2 <= 1 + tolerance and -tolerance <= y1 < y2 <= 1 + tolerance
            ):
                raise DataError(
                    f"{where}: box XMin={x1} XMax={x2} YMin={y1} YMax={y2} is empty or lies outside the image "
                    "(coordinates are fractions in 0..1)"
                )
            image_id = row["ImageID"]
            if image_id not in resolved:
                resolved[image_id] = resolve_image(image_root, f"{image_id}.jpg", where,
                                                   allow_outside_root=allow_outside_root)
            box = (max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0))
            dataset.add(resolved[image_id], box, label_of[row["LabelName"]], None, where)
    if not dataset.labels:
        raise DataError(f"{box_file}: no boxes")
    return dataset


def evaluate_boxcls(
    extractor: FeatureExtractor, dataset: BoxClassificationSet, templates: Sequence[str] = IMAGENET_TEMPLATES
) -> dict[str, float]:
    """Top-1 / top-5 accuracy of region embeddings against the prompt-ensemble classifier."""
    classifier = build_classifier(extractor, dataset.classnames, templates)
    regions = RegionRequests()
    handles = [
        regions.add(image, box, source, size, dataset.normalized)
        for image, box, size, source in zip(dataset.images, dataset.boxes, dataset.sizes, dataset.sources)
    ]
    box_features = extractor.encode_regions(regions.requests(), desc=f"{dataset.name} images").rows(handles)
    metrics = topk_from_ranks(classification_ranks(box_features, classifier, torch.tensor(dataset.labels)))
    return {**metrics, "num_boxes": len(dataset.labels)}


def prepare_coco_boxes(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_coco_boxes(paths["ann"], paths["images"], allow_outside_root=options.allow_outside_root))


def prepare_lvis_boxes(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_lvis_boxes(paths["ann"], paths["images"], allow_outside_root=options.allow_outside_root))


def prepare_openimages_boxes(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_openimages_boxes(paths["ann"], paths["classes"], paths["images"],
                                              allow_outside_root=options.allow_outside_root))


def score_boxcls(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_boxcls(extractor, prepared.payload, context.templates)}
