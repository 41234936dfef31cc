"""FG-CLIP 2's Chinese benchmarks, read and scored as its official evaluation scripts do
(360CVGroup/FG-CLIP ``fgclip2/eval/``), quirks included.

* ``long_cn`` (LIT-CN, DCI-CN, DOCCI-CN; ``long_trans_cn.py``): one benchmark per ``.txt`` of a
  folder, lines ``image<TAB>caption`` (exactly one tab), the image path as written (relative to
  the file's folder); line i's image and caption are pair i. Long path (196 tokens), captions
  as written (not lower-cased). Image-to-text and text-to-image R@1.
* ``coco_cn`` (``coco_cn.py``): lines ``COCO_(train|val)2014_<12 digits>#zhm#<digit> <caption>``;
  other lines are skipped, as the script skips them. Captions grouped by image in first-seen
  order, the first five kept, lower-cased; images ``<root>/train2014/`` or ``<root>/val2014/``.
* ``flickr30k_cna`` (``flicker_cna.py``): token-file lines ``<name>#<anything><TAB><caption>``;
  the image is ``<name>.jpg`` (the text before the first ``#``); the caption is stripped and
  otherwise kept as written: spaces between words and ``word:tag`` suffixes stay (the script's
  tag-stripping ``get_sentence`` is never called), not lower-cased; every caption of an image.
* ``coco_cn`` and ``flickr30k_cna`` score as both scripts do: similarity
  ``sigmoid(exp(t) * cos + b)``, R@1/5/10 with the captions' positions taken as five per image:
  image i hits when one of texts ``5i .. 5i+4`` is in its top k, text j's image is ``j // 5``
  (the scripts' ``range(1000)`` / ``range(5000)`` are the file's image and caption counts).
* ``boxclass_cn`` (BoxClass-CN; ``in1k/laion_cn_box_cls_ddp.py``): COCO-style JSON
  (``categories``, ``images``, ``annotations`` with ``bbox`` xywh in pixels); class texts are
  the category names alone (the first name of a list), box path, 64 tokens, not lower-cased;
  a box's label is ``category_id - 1`` (its position in ``categories``, as the script takes
  it); each box's region feature against the class texts, top-1 / top-5.

Ranking takes the last k of an ascending ``argsort`` of each row, as the scripts do. Each image
is pre-processed as its own call (the scripts process one image at a time), so with FG-CLIP 2
its patch budget is its own. Scores of models without ``logit_bias`` (FG-CLIP) use the cosine.
An image that cannot be read is an error here (the BoxClass-CN script skips its boxes).
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import DataError, ImageRequest, RegionRequests, read_json, require, resolve_image
from .features import FeatureExtractor
from .spec import Prepared, ScoreContext, single

COCO_CN_LINE = re.compile(r"COCO_(train|val)2014_(\d{12})#zhm#\d\s+(.*)")
CAPTIONS_PER_IMAGE = 5  # the official scripts' fixed layout of captions per image
RETRIEVAL_KS = (1, 5, 10)
BOX_TOP_K = 5


@dataclass
class ChineseRetrievalSet:
    """Images and captions of one Chinese retrieval benchmark.

    Args:
        texts: captions in file order, as the official script tokenizes them (lower-cased by the
            reader where it lower-cases); ``text_kind`` the text path.
        grouped: captions grouped by image (truth by position, five per image), else one pair per line.
    """

    name: str
    source: str
    images: list[str]
    texts: list[str]
    text_kind: str
    grouped: bool


@dataclass
class ChineseBoxSet:
    """BoxClass-CN boxes (xyxy in pixels), their labels and the class names in label order."""

    name: str
    source: str
    classnames: list[str]
    images: list[str]
    boxes: list[tuple[float, float, float, float]]
    labels: list[int]
    sources: list[str]


# ---------------------------------------------------------------------------------- readers
def _lines(path: str | os.PathLike):
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            yield f"{path} line {number}", line


def load_long_cn(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 allow_outside_root: bool = False) -> ChineseRetrievalSet:
    """LIT-CN / DCI-CN / DOCCI-CN: ``image<TAB>caption`` lines (``long_trans_cn.py``)."""
    path = Path(path)
    root = path.parent if image_root is None else image_root
    images, texts = [], []
    for where, line in _lines(path):
        fields = line.rstrip().split("\t")
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'image<TAB>caption' (one tab), got {line.rstrip()[:80]!r}")
        images.append(resolve_image(root, fields[0], where, allow_outside_root=allow_outside_root))
        texts.append(fields[1])
    if not texts:
        raise DataError(f"{path}: no image-caption lines")
    return ChineseRetrievalSet(path.stem, str(path), images, texts, "long", grouped=False)


def _grouped(name: str, source: str, pairs: dict[str, tuple[str, list[str]]], lowercase: bool, limit: int | None):
    if not pairs:
        raise DataError(f"{source}: no image-caption lines")
    images, texts = [], []
    for image, captions in pairs.values():
        images.append(image)
        texts.extend(caption.lower() if lowercase else caption for caption in captions[:limit])
    return ChineseRetrievalSet(name, source, images, texts, "short", grouped=True)


def load_coco_cn(path: str | os.PathLike, image_root: str | os.PathLike,
                 allow_outside_root: bool = False) -> ChineseRetrievalSet:
    """COCO-CN caption lines (``coco_cn.py``); lines not matching its pattern are skipped."""
    pairs: dict[str, tuple[str, list[str]]] = {}
    for where, line in _lines(path):
        match = COCO_CN_LINE.match(line.strip())
        if not match:
            continue
        name = f"COCO_{match.group(1)}2014_{match.group(2)}.jpg"
        if name not in pairs:
            pairs[name] = (resolve_image(image_root, f"{match.group(1)}2014/{name}", where,
                                         allow_outside_root=allow_outside_root), [])
        pairs[name][1].append(match.group(3))
    return _grouped("coco_cn", str(path), pairs, lowercase=True, limit=CAPTIONS_PER_IMAGE)


def load_fgclip2_flickr30k_cna(path: str | os.PathLike, image_root: str | os.PathLike,
                               allow_outside_root: bool = False) -> ChineseRetrievalSet:
    """Flickr30k-CNA token file ``<name>#n<TAB>caption`` (``flicker_cna.py``)."""
    pairs: dict[str, tuple[str, list[str]]] = {}
    for where, line in _lines(path):
        fields = line.strip().split("\t")
        if fields == [""]:
            continue
        if len(fields) < 2 or not fields[0]:
            raise DataError(f"{where}: expected '<image>#<n><TAB><caption>', got {line.strip()[:80]!r}")
        name = f"{fields[0].split('#')[0]}.jpg"
        if name not in pairs:
            pairs[name] = (resolve_image(image_root, name, where, allow_outside_root=allow_outside_root), [])
        pairs[name][1].append(fields[1].strip())
    return _grouped("flickr30k_cna", str(path), pairs, lowercase=False, limit=None)


def load_boxclass_cn(path: str | os.PathLike, image_root: str | os.PathLike,
                     allow_outside_root: bool = False) -> ChineseBoxSet:
    """BoxClass-CN COCO-style JSON (``laion_cn_box_cls_ddp.py``)."""
    data = read_json(path)
    source = str(path)
    classnames = []
    for index, category in enumerate(require(data, "categories", source, list)):
        name = require(category, "name", f"{path} categories[{index}]", (str, list))
        classnames.append(name[0] if isinstance(name, list) else name)
    files = {}
    for index, image in enumerate(require(data, "images", source, list)):
        where = f"{path} images[{index}]"
        files[require(image, "id", where)] = (require(image, "file_name", where, str), where)
    dataset = ChineseBoxSet("boxclass_cn", source, classnames, [], [], [], [])
    for index, annotation in enumerate(require(data, "annotations", source, list)):
        where = f"{path} annotations[{index}]"
        image_id = require(annotation, "image_id", where)
        if image_id not in files:
            raise DataError(f"{where}: unknown image_id {image_id!r} (not in 'images')")
        bbox = require(annotation, "bbox", where, list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise DataError(f"{where}: 'bbox' must be four numbers [x, y, w, h], got {bbox!r}")
        label = require(annotation, "category_id", where, int) - 1
        if not 0 <= label < len(classnames):
            raise DataError(f"{where}: category_id {label + 1} - 1 is not a position in 'categories' "
                            f"({len(classnames)} classes)")
        x, y, w, h = (float(v) for v in bbox)
        dataset.images.append(resolve_image(image_root, files[image_id][0], where,
                                            allow_outside_root=allow_outside_root))
        dataset.boxes.append((x, y, x + w, y + h))
        dataset.labels.append(label)
        dataset.sources.append(where)
    if not dataset.labels:
        raise DataError(f"{path}: no annotations")
    return dataset


# ---------------------------------------------------------------------------------- scoring
@contextlib.contextmanager
def official_processing(processor):
    """The scripts' pre-processing for the duration of a benchmark: each image its own patch budget
    (a processor with ``budget_scope``) and texts tokenized as given (one with ``lowercase``; the
    readers lower-case where the script does)."""
    saved = {name: getattr(processor, name) for name in ("budget_scope", "lowercase") if hasattr(processor, name)}
    if "budget_scope" in saved:
        processor.budget_scope = "image"
    if "lowercase" in saved:
        processor.lowercase = False
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(processor, name, value)


def sigmoid_similarity(model, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(I, T) ``sigmoid(exp(t) * cos + b)`` of normalised features, as the scripts rank; the cosine for
    a model without ``logit_bias``."""
    similarity = images @ texts.T
    bias = getattr(model, "logit_bias", None)
    if bias is None:
        return similarity
    scale = model.logit_scale.detach().float().cpu().exp()
    return torch.sigmoid(scale * similarity + bias.detach().float().cpu())


def top_k(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """The last ``k`` columns of each row's ascending argsort (the scripts' ``argsort()[-k:]``)."""
    return similarity.argsort(dim=-1)[:, -k:]


def grouped_recall(similarity: torch.Tensor, ks=RETRIEVAL_KS) -> dict[str, float]:
    """R@k with the scripts' positional truth: image i owns texts ``5i .. 5i+4``, text j image ``j // 5``."""
    num_images, num_texts = similarity.shape
    own_texts = torch.arange(num_images)[:, None] * CAPTIONS_PER_IMAGE + torch.arange(CAPTIONS_PER_IMAGE)
    text_images = torch.arange(num_texts) // CAPTIONS_PER_IMAGE
    metrics = {}
    for k in ks:
        ranked = top_k(similarity, k)
        metrics[f"i2t_r{k}"] = (ranked[:, :, None] == own_texts[:, None, :]).any(-1).any(-1).double().mean().item()
    for k in ks:
        ranked = top_k(similarity.T, k)
        metrics[f"t2i_r{k}"] = (ranked == text_images[:, None]).any(-1).double().mean().item()
    return metrics


def paired_recall(similarity: torch.Tensor) -> dict[str, float]:
    """R@1 of line-paired images and captions: row i's best column is i, both ways."""
    truth = torch.arange(similarity.shape[0])
    return {"i2t_r1": (top_k(similarity, 1)[:, 0] == truth).double().mean().item(),
            "t2i_r1": (top_k(similarity.T, 1)[:, 0] == truth).double().mean().item()}


def evaluate_chinese_retrieval(extractor: FeatureExtractor, dataset: ChineseRetrievalSet) -> dict[str, float]:
    """The official script's recalls of one retrieval benchmark."""
    encoder = extractor.model
    with official_processing(encoder.processor):
        requests = [ImageRequest(path, source=f"{dataset.source}: {path}") for path in dataset.images]
        images = extractor.encode_images(requests, desc=f"{dataset.name} images")
        texts = extractor.encode_texts(dataset.texts, dataset.text_kind, desc=f"{dataset.name} captions")
    similarity = sigmoid_similarity(encoder.model, images, texts)
    metrics = grouped_recall(similarity) if dataset.grouped else paired_recall(similarity)
    return {**metrics, "num_images": len(dataset.images), "num_texts": len(dataset.texts)}


def evaluate_boxclass_cn(extractor: FeatureExtractor, dataset: ChineseBoxSet) -> dict[str, float]:
    """Top-1 / top-5 of ``softmax(100 * region @ class texts)``, as the BoxClass-CN script."""
    with official_processing(extractor.model.processor):
        classes = extractor.encode_texts(dataset.classnames, "region", desc="class names")
        regions = RegionRequests()
        handles = [regions.add(image, box, where) for image, box, where in
                   zip(dataset.images, dataset.boxes, dataset.sources)]
        boxes = extractor.encode_regions(regions.requests(), desc=f"{dataset.name} images").rows(handles)
    ranked = (100.0 * boxes @ classes.T).softmax(dim=-1).topk(min(BOX_TOP_K, len(dataset.classnames))).indices
    labels = torch.tensor(dataset.labels)[:, None]
    return {"top1": (ranked[:, :1] == labels).any(-1).double().mean().item(),
            "top5": (ranked == labels).any(-1).double().mean().item(), "num_boxes": len(dataset.labels)}


# ---------------------------------------------------------------------------------- registry hooks
def prepare_long_cn_dir(spec, paths: dict, options) -> list[Prepared]:
    """One benchmark per ``.txt`` of ``paths["dir"]`` (e.g. lit_cn.txt, dci_cn.txt, docci_cn.txt)."""
    files = sorted(Path(paths["dir"]).glob("*.txt"))
    if not files:
        raise DataError(f"{paths['dir']}: no .txt files")
    return [Prepared(spec, f"{spec.label}/{path.stem}",
                     load_long_cn(path, allow_outside_root=options.allow_outside_root)) for path in files]


def prepare_coco_cn(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_coco_cn(paths["ann"], paths["images"], allow_outside_root=options.allow_outside_root))


def prepare_fgclip2_flickr30k_cna(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_fgclip2_flickr30k_cna(paths["ann"], paths["images"],
                                                   allow_outside_root=options.allow_outside_root))


def prepare_boxclass_cn(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_boxclass_cn(paths["ann"], paths["images"], allow_outside_root=options.allow_outside_root))


def score_chinese_retrieval(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_chinese_retrieval(extractor, prepared.payload)}


def score_boxclass_cn(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_boxclass_cn(extractor, prepared.payload)}
