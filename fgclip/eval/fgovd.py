"""FG-OVD (Bianchi et al., CVPR 2024): pick the right caption of a box among hard negatives.

Each item is a box on a COCO val2017 image, one positive caption and a variable number of
negative captions (10 in the difficulty subsets, fewer in some attribute subsets). The score
of a caption is the cosine between the box's region embedding and the caption's region-text
embedding; an item counts as correct when the positive scores at least as high as every
negative (REFERENCE section 4).

Two file formats are read:

* FG-CLIP's JSONL, one item per line: ``img_path`` (relative to the image root), ``bbox``
  (x, y, w, h in pixels), ``pos_expression`` (a caption or a one-caption list),
  ``neg_expression`` (list); optional ``width`` / ``height`` are checked against the image.
* The original LVIS-style JSON: ``images`` (``file_name`` / ``coco_url``, ``width``,
  ``height``), ``categories`` whose ``name`` is a full caption, and ``annotations`` with
  ``image_id``, ``bbox``, ``category_id`` (the positive) and ``neg_category_ids``.

Subsets and the file stems they are found under (``.jsonl`` or ``.json``, optionally with
an ``_llava`` suffix), as FG-CLIP's ``data/fgovd/`` and the FG-OVD benchmark name them:
hard ``h_attributes`` / ``1_attributes``, medium ``m_attributes`` / ``2_attributes``, easy
``e_attributes`` / ``3_attributes``, trivial ``shuffle_negatives``, and ``color`` /
``material`` / ``pattern`` / ``transparency``. Every subset can also be named by its own name
(``hard.jsonl``). So FG-CLIP's ``h_attributes_llava.jsonl`` is hard, FG-OVD's
``1_attributes.json`` too.

All subsets are evaluated together: an image is encoded once for all its boxes in all
subsets, and each distinct caption once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .spec import Prepared, ScoreContext
from .common import (
    DataError,
    RegionRequests,
    coco_image_path,
    image_size_of,
    iter_jsonl,
    read_json,
    require,
    resolve_image,
    text_list,
    xywh_to_xyxy,
)
from ..errors import ConfigError, ImageError
from ..image_io import image_size
from .features import FeatureExtractor
from .metrics import multiple_choice_accuracy

FGOVD_SUBSETS: dict[str, tuple[str, ...]] = {
    "hard": ("hard", "h_attributes", "1_attributes"),
    "medium": ("medium", "m_attributes", "2_attributes"),
    "easy": ("easy", "e_attributes", "3_attributes"),
    "trivial": ("trivial", "shuffle_negatives"),
    "color": ("color",),
    "material": ("material",),
    "pattern": ("pattern",),
    "transparency": ("transparency",),
}


@dataclass
class FGOVDItem:
    """One box with its captions; ``box`` is xyxy in pixels of the original image."""

    image: str
    box: tuple[float, float, float, float]
    size: tuple[int, int] | None
    positive: str
    negatives: list[str]
    source: str


@dataclass
class FGOVDBenchmark:
    name: str
    source: str
    items: list[FGOVDItem]


def find_fgovd_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Subset name -> benchmark file found in ``directory`` (see the module docstring)."""
    directory = Path(directory)
    found: dict[str, Path] = {}
    for subset, stems in FGOVD_SUBSETS.items():
        candidates = [
            directory / f"{stem}{suffix}{extension}"
            for stem in stems for suffix in ("", "_llava") for extension in (".jsonl", ".json")
        ]
        existing = [path for path in candidates if path.is_file()]
        if len(existing) > 1:
            raise DataError(f"{directory}: several files for FG-OVD subset {subset!r}: {[p.name for p in existing]}")
        if existing:
            found[subset] = existing[0]
    return found


def load_fgovd(path: str | os.PathLike, image_root: str | os.PathLike, name: str | None = None,
               allow_outside_root: bool = False) -> FGOVDBenchmark:
    """Read an FG-OVD benchmark file: ``.jsonl`` as FG-CLIP's format, ``.json`` as the original one."""
    path = Path(path)
    name = name or path.stem
    if path.suffix == ".jsonl":
        items = _load_jsonl(path, image_root, allow_outside_root=allow_outside_root)
    elif path.suffix == ".json":
        items = _load_lvis_style(path, image_root, allow_outside_root=allow_outside_root)
    else:
        raise DataError(f"{path}: expected a .jsonl (FG-CLIP) or .json (original FG-OVD) file")
    if not items:
        raise DataError(f"{path}: no items")
    return FGOVDBenchmark(name, str(path), items)


def _header_size(image: str, where: str, cache: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(width, height) of an image file from its header (cached), for records that declare none."""
    if image not in cache:
        try:
            cache[image] = image_size(image)
        except ImageError as error:
            raise DataError(f"{where}: {error}") from None
    return cache[image]


def _load_jsonl(path: Path, image_root, allow_outside_root: bool = False) -> list[FGOVDItem]:
    """FG-CLIP's JSONL; a record without ``width`` / ``height`` has its box checked against the size
    read from the image header."""
    items, sizes = [], {}
    for where, record in iter_jsonl(path):
        relative = require(record, "img_path", where, str)
        image = resolve_image(image_root, relative, where, allow_outside_root=allow_outside_root)
        size = image_size_of(record, where)
        box = xywh_to_xyxy(require(record, "bbox", where), where, size or _header_size(image, where, sizes))
        positives = text_list(require(record, "pos_expression", where), "pos_expression", where)
        if len(positives) != 1:
            raise DataError(f"{where}: 'pos_expression' must hold one caption, got {len(positives)}")
        negatives = text_list(require(record, "neg_expression", where), "neg_expression", where)
        items.append(FGOVDItem(image, box, size, positives[0], negatives, where))
    return items


def _load_lvis_style(path: Path, image_root, allow_outside_root: bool = False) -> list[FGOVDItem]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        require(data, key, str(path), list)
    captions = {}
    for index, category in enumerate(data["categories"]):
        where = f"{path} categories[{index}]"
        captions[require(category, "id", where)] = text_list(require(category, "name", where), "name", where)[0]
    images = {}
    for index, image in enumerate(data["images"]):
        where = f"{path} images[{index}]"
        images[require(image, "id", where)] = (image, where)
    items, resolved, sizes = [], {}, {}
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path} annotations[{index}]"
        if isinstance(annotation, dict) and "id" in annotation:
            where += f" (id {annotation['id']})"
        image_id = require(annotation, "image_id", where)
        if image_id not in images:
            raise DataError(f"{where}: unknown image_id {image_id!r} (not in 'images')")
        image, image_where = images[image_id]
        if image_id not in resolved:
            resolved[image_id] = resolve_image(image_root, coco_image_path(image, image_where), image_where,
                                               allow_outside_root=allow_outside_root)
        size = image_size_of(image, image_where)
        box = xywh_to_xyxy(require(annotation, "bbox", where), where,
                           size or _header_size(resolved[image_id], image_where, sizes))
        positive_id = require(annotation, "category_id", where)
        negative_ids = require(annotation, "neg_category_ids", where, list)
        if not negative_ids:
            raise DataError(f"{where}: 'neg_category_ids' is empty")
        for category_id in [positive_id, *negative_ids]:
            if category_id not in captions:
                raise DataError(f"{where}: unknown category id {category_id!r} (not in 'categories')")
        items.append(
            FGOVDItem(resolved[image_id], box, size, captions[positive_id], [captions[i] for i in negative_ids], where)
        )
    return items


def evaluate_fgovd(extractor: FeatureExtractor, benchmarks: Sequence[FGOVDBenchmark]) -> dict[str, dict[str, float]]:
    """Accuracy of every benchmark, ``{name: {"accuracy": ..., "num_items": ...}}``."""
    regions = RegionRequests()
    handles = [[regions.add(it.image, it.box, it.source, it.size) for it in bench.items] for bench in benchmarks]
    features = extractor.encode_regions(regions.requests(), desc="fgovd images")
    texts = sorted({t for bench in benchmarks for it in bench.items for t in (it.positive, *it.negatives)})
    text_features = extractor.encode_texts(texts, "region", desc="fgovd captions")
    text_row = {text: row for row, text in enumerate(texts)}
    results = {}
    for bench, bench_handles in zip(benchmarks, handles):
        box_features = features.rows(bench_handles)
        positive = torch.tensor([text_row[it.positive] for it in bench.items])
        width = max(len(it.negatives) for it in bench.items)
        negative = torch.zeros(len(bench.items), width, dtype=torch.long)
        valid = torch.zeros(len(bench.items), width, dtype=torch.bool)
        for row, item in enumerate(bench.items):
            negative[row, : len(item.negatives)] = torch.tensor([text_row[t] for t in item.negatives])
            valid[row, : len(item.negatives)] = True
        positive_scores = (box_features * text_features[positive]).sum(-1)
        negative_scores = torch.einsum("nd,nmd->nm", box_features, text_features[negative])
        accuracy = multiple_choice_accuracy(positive_scores, negative_scores, valid)
        results[bench.name] = {"accuracy": accuracy, "num_items": len(bench.items)}
    return results


def prepare_fgovd(spec, paths: dict, options) -> list[Prepared]:
    """Every FG-OVD subset file found under ``paths["dir"]`` (or those of ``options.fgovd_subsets``)."""
    found = find_fgovd_files(paths["dir"])
    wanted = list(options.fgovd_subsets) if options.fgovd_subsets else list(found)
    unknown = [s for s in wanted if s not in FGOVD_SUBSETS]
    if unknown:
        raise ConfigError(f"--fgovd-subsets: unknown FG-OVD subset(s) {unknown}; expected {', '.join(FGOVD_SUBSETS)}")
    missing = [s for s in wanted if s not in found]
    if missing:
        raise DataError(f"{paths['dir']}: no file for FG-OVD subset(s) {missing}")
    if not wanted:
        raise DataError(f"{paths['dir']}: no FG-OVD files (expected e.g. h_attributes_llava.jsonl, "
                        "1_attributes.json or hard.jsonl)")
    return [Prepared(spec, "fgovd", [load_fgovd(found[s], paths["images"], name=s,
                                                allow_outside_root=options.allow_outside_root) for s in wanted])]


def score_fgovd(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {f"fgovd/{name}": metrics for name, metrics in evaluate_fgovd(extractor, prepared.payload).items()}
