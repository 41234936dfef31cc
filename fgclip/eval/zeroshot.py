"""Zero-shot image classification from an image folder, and the prompt-ensemble classifier.

Folder layout: one sub-folder per class holding its images (any depth is not searched:
images sit directly in the class folder).

* Sub-folders named by integers (ImageNetV2: ``0`` .. ``999``): the name is the class index.
* Any other names (ImageNet: WordNet ids ``n01440764`` ...): sorted names give the class
  order, which for the 1000 ImageNet ids is the standard ImageNet-1K order.

Class names default to the ImageNet-1K names of :mod:`.templates`; a text file with one name
per line (in class order) replaces them for other datasets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.finehard import IMAGE_EXTENSIONS, is_image_file
from .spec import Prepared, ScoreContext, single
from .common import DataError, ImageRequest
from .features import FeatureExtractor
from .metrics import classification_ranks, topk_from_ranks
from .templates import IMAGENET_CLASSNAMES, IMAGENET_TEMPLATES, TEMPLATE_SETS


@dataclass
class ClassificationSet:
    """Images with one class label each.

    Args:
        images: image paths.
        labels: class index of each image.
        classnames: class names in class-index order.
    """

    name: str
    source: str
    images: list[str]
    labels: list[int]
    classnames: list[str]


def read_classnames(path: str | os.PathLike) -> list[str]:
    """One class name per non-blank line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: class-name file not found")
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def load_templates(spec: str) -> tuple[str, ...]:
    """A template set by name (:data:`TEMPLATE_SETS`: ``openai``, ``zh``) or a file of one template
    per non-blank line, each with one ``{}`` for the class name."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"templates {spec!r}: neither a template set ({', '.join(TEMPLATE_SETS)}) nor a file")
    templates = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            if line.count("{}") != 1:
                raise DataError(f"{path} line {line_number}: a template needs exactly one {{}}, got {line!r}")
            templates.append(line.strip())
    if not templates:
        raise DataError(f"{path}: no templates")
    return tuple(templates)


def load_image_folder(
    root: str | os.PathLike, classnames: Sequence[str] | None = None, name: str = "imagenet"
) -> ClassificationSet:
    """Read a class-per-folder image tree (see the module docstring for the class order)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classnames = list(classnames) if classnames is not None else list(IMAGENET_CLASSNAMES)
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not folders:
        raise DataError(f"{root}: no class sub-folders")
    if all(folder.isdigit() for folder in folders):
        labels_of = {folder: int(folder) for folder in folders}
        too_large = [f for f in folders if labels_of[f] >= len(classnames)]
        if too_large:
            raise DataError(f"{root}/{too_large[0]}: class index {too_large[0]} but only {len(classnames)} class names")
    else:
        if len(folders) != len(classnames):
            raise DataError(
                f"{root}: {len(folders)} class folders but {len(classnames)} class names; sorted folder "
                f"names give the class order, so every class needs a folder (or give a class-name file)"
            )
        labels_of = {folder: index for index, folder in enumerate(folders)}
    images, labels = [], []
    for folder in folders:
        files = sorted(
            entry.path for entry in os.scandir(root / folder)
            if entry.is_file() and is_image_file(entry.name)
        )
        images.extend(files)
        labels.extend([labels_of[folder]] * len(files))
    if not images:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    return ClassificationSet(name, str(root), images, labels, classnames)


def build_classifier(
    extractor: FeatureExtractor, classnames: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES,
    kind: str = "short",
) -> torch.Tensor:
    """(C, D) class embeddings: mean of the normalised template embeddings, renormalised."""
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    texts = [template.format(name) for name in classnames for template in templates]
    features = extractor.encode_texts(texts, kind, desc="class prompts")
    features = features.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(features, dim=-1)


def evaluate_zeroshot(
    extractor: FeatureExtractor, dataset: ClassificationSet, templates: Sequence[str] = IMAGENET_TEMPLATES
) -> dict[str, float]:
    """Top-1 / top-5 accuracy of image embeddings against the prompt-ensemble classifier."""
    classifier = build_classifier(extractor, dataset.classnames, templates)
    requests = [ImageRequest(path, source=f"{dataset.source}: {path}") for path in dataset.images]
    features = extractor.encode_images(requests, desc=f"{dataset.name} images")
    metrics = topk_from_ranks(classification_ranks(features, classifier, torch.tensor(dataset.labels)))
    return {**metrics, "num_images": len(dataset.images)}


def prepare_image_folder(spec, paths: dict, options) -> list[Prepared]:
    classnames = read_classnames(paths["classnames"]) if paths["classnames"] else None
    return single(spec, load_image_folder(paths["dir"], classnames, name=spec.name))


def score_zeroshot(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_zeroshot(extractor, prepared.payload, context.templates)}
