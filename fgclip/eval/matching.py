"""Image-text matching (R2D2's Zero ICM / IQM style): is this caption right for this image?

A benchmark is a file of ``image<TAB>text<TAB>label`` lines (label 1 = matching, 0 = not);
images are relative to the file's folder unless an image root is given. The score of a pair
is the cosine of the dual encoder's image and text embeddings (and, with a
:class:`~fgclip.rerank.CrossEncoderReranker`, also its matching probability); the metric is
the ROC AUC of the scores against the labels (scikit-learn's ``roc_auc_score``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .spec import Prepared, ScoreContext
from .common import DataError, ImageRequest, iter_tsv, resolve_image
from .features import FeatureExtractor
from .retrieval import PairScorer


@dataclass
class MatchingSet:
    """Pairs ``(images[pair_image[p]], texts[p], labels[p])``; each image file is listed once."""

    name: str
    source: str
    images: list[str]
    image_sources: list[str]
    pair_image: list[int]
    texts: list[str]
    labels: list[int]
    text_kind: str


def load_matching_tsv(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, text_kind: str = "short",
    name: str | None = None, allow_outside_root: bool = False,
) -> MatchingSet:
    """Read ``image<TAB>text<TAB>label`` lines; both labels must occur."""
    path = Path(path)
    image_root = path.parent if image_root is None else image_root
    index: dict[str, int] = {}
    dataset = MatchingSet(name or path.stem, str(path), [], [], [], [], [], text_kind)
    for where, (image, text, label) in iter_tsv(path, ("image", "text", "label")):
        if label not in ("0", "1"):
            raise DataError(f"{where}: label: expected 0 or 1, got {label!r}")
        image = resolve_image(image_root, image, where, allow_outside_root=allow_outside_root)
        if image not in index:
            index[image] = len(dataset.images)
            dataset.images.append(image)
            dataset.image_sources.append(where)
        dataset.pair_image.append(index[image])
        dataset.texts.append(text)
        dataset.labels.append(int(label))
    if len(set(dataset.labels)) != 2:
        raise DataError(f"{path}: matching needs both matching (1) and non-matching (0) pairs")
    return dataset


def matching_auc(labels: list[int], scores: torch.Tensor) -> float:
    """ROC AUC of the pairs' scores against their 0/1 labels (scikit-learn's ``roc_auc_score``, as R2D2's
    ``train_r2d2_matching.py``): a matching pair scored equal to a non-matching one counts half."""
    from sklearn.metrics import roc_auc_score  # imported here: it costs ~1.5 s, and only this task needs it

    return float(roc_auc_score(labels, scores.float().cpu().numpy()))


def evaluate_matching(extractor: FeatureExtractor, dataset: MatchingSet, reranker=None) -> dict[str, float]:
    """ROC AUC of the pairs' cosine scores (``auc``), and of a re-ranker's scores (``rerank_auc``)."""
    requests = [ImageRequest(path, source=where) for path, where in zip(dataset.images, dataset.image_sources)]
    pair_image = torch.tensor(dataset.pair_image)
    if reranker is None:
        images = extractor.encode_images(requests, desc=f"{dataset.name} images")
        texts = extractor.encode_texts(dataset.texts, dataset.text_kind, desc=f"{dataset.name} texts")
    else:  # one pass gives both the tokens the re-ranker reads and the global embeddings
        image_tokens, images = extractor.encode_image_tokens(requests, desc=f"{dataset.name} images")
        text_tokens, texts = extractor.encode_text_tokens(dataset.texts, dataset.text_kind, desc=f"{dataset.name} texts")
    cosine = (images[pair_image] * texts).sum(dim=-1)
    metrics = {"auc": matching_auc(dataset.labels, cosine)}
    if reranker is not None:
        score = PairScorer(reranker, image_tokens, text_tokens)
        text_index = torch.arange(len(dataset.texts))
        scores = torch.cat([score(pair_image[start : start + 256], text_index[start : start + 256]).float().cpu()
                            for start in range(0, len(text_index), 256)])
        metrics["rerank_auc"] = matching_auc(dataset.labels, scores)
    return {**metrics, "num_pairs": len(dataset.labels), "num_images": len(dataset.images)}


def prepare_matching_dir(spec, paths: dict, options) -> list[Prepared]:
    """One benchmark per ``image<TAB>text<TAB>label`` file of ``paths["dir"]``."""
    files = sorted(Path(paths["dir"]).glob("*.tsv"))
    if not files:
        raise DataError(f"{paths['dir']}: no .tsv files")
    return [Prepared(spec, f"{spec.label}/{f.stem}", load_matching_tsv(f, text_kind=options.tsv_text_kind,
                                                                       allow_outside_root=options.allow_outside_root))
            for f in files]


def score_matching(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_matching(extractor, prepared.payload, context.reranker)}
