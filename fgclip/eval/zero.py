"""Zero / CCMB downstream sets (Xie et al., "CCMB: A Large-scale Chinese Cross-modal Benchmark"), read
from their released files as the authors' code (github.com/yuxie11/R2D2, c7127fa) reads them.

Released layout (the repository's README; zero.so.com/detail.html gives the fields)::

    IQR_IQM_ICR_ICM_images/           every image of the four Zero sets, one folder
    ICR/val/long_itr_val.json         retrieval, JSON lines {"text", "image_path"} (long captions)
    IQR/val/short_itr_val.json        retrieval, JSON lines {"text", "image_path"} (short search queries)
    ICM/val/long_itm_val.json         matching, JSON lines {"text", "image_path", "label"}
    IQM/val/short_itm_val.json        matching, JSON lines {"text", "image_path", "label"}

As the authors' loaders: only the base name of ``image_path`` is used (looked up in the image
folder) and captions of one image are grouped in first-seen order. The authors evaluate ICR / IQR
on the ``val`` file (their ``test`` split reads it too), ICM / IQM on ``val``.

Flickr30k-CNA, the fifth set, is released as a token file (``<image id>#n<TAB><caption>`` lines,
images ``<image id>.jpg``), the layout FG-CLIP 2's script reads too: it is read and scored by
:mod:`fgclip.eval.chinese` (benchmark ``flickr30k_cna``), whose R@1/5/10 equal the authors'
``itm_eval`` for five captions per image (their mean is the paper's mean recall).

Metrics, as the authors' scripts compute them:

* retrieval (``train_r2d2_retrieval.py::itm_eval``): R@1/5/10 image-to-text and text-to-image and
  their mean, ``mean_recall`` (the paper's MR). Fractions here; the paper prints percentages. With
  a re-ranker, each query's ``top_k`` dual-encoder candidates are ordered by the cross encoders'
  mean matching probability *plus* the dual-encoder cosine (their ``compute_cross_score``), and
  ``rerank_*`` recalls are added; their configs use ``top_k`` 64 for ICR / IQR
  (``--rerank-top-k``);
* matching (``train_r2d2_matching.py``): ROC AUC of the pairs' scores against the labels
  (:func:`fgclip.eval.matching.evaluate_matching`: the dual-encoder cosine, ``auc``, and with a
  re-ranker its mean matching probability, ``rerank_auc``, the authors' score).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..rerank.ranking import ranked_recall, rerank_topk
from .common import DataError, ImageRequest, iter_jsonl, require, require_text, resolve_image
from .features import FeatureExtractor
from .matching import MatchingSet, evaluate_matching
from .metrics import retrieval_recall
from .retrieval import PairScorer, RetrievalSet, _Builder
from .spec import Prepared, ScoreContext, single

KS = (1, 5, 10)


def _image_name(record: dict, where: str) -> str:
    """The base name of ``image_path`` (the authors' ``image_path.split('/')[-1]``)."""
    name = require_text(record, "image_path", where).split("/")[-1]
    if not name:
        raise DataError(f"{where}: 'image_path' has no file name")
    return name


def load_zero_retrieval(path: str | os.PathLike, image_root: str | os.PathLike, text_kind: str,
                        name: str | None = None, allow_outside_root: bool = False) -> RetrievalSet:
    """ICR / IQR: JSON lines ``{"text", "image_path"}``; captions grouped by image file."""
    builder = _Builder()
    for where, record in iter_jsonl(path):
        image = resolve_image(image_root, _image_name(record, where), where, allow_outside_root=allow_outside_root)
        builder.add(image, [require_text(record, "text", where)], where)
    return builder.build(name or Path(path).stem, str(path), text_kind)


def load_zero_matching(path: str | os.PathLike, image_root: str | os.PathLike, text_kind: str,
                       name: str | None = None, allow_outside_root: bool = False) -> MatchingSet:
    """ICM / IQM: JSON lines ``{"text", "image_path", "label"}`` with label 1 (match) or 0."""
    index: dict[str, int] = {}
    dataset = MatchingSet(name or Path(path).stem, str(path), [], [], [], [], [], text_kind)
    for where, record in iter_jsonl(path):
        label = require(record, "label", where)
        if isinstance(label, bool) or label not in (0, 1):
            raise DataError(f"{where}: 'label' must be 0 or 1, got {label!r}")
        image = resolve_image(image_root, _image_name(record, where), where, allow_outside_root=allow_outside_root)
        if image not in index:
            index[image] = len(dataset.images)
            dataset.images.append(image)
            dataset.image_sources.append(where)
        dataset.pair_image.append(index[image])
        dataset.texts.append(require_text(record, "text", where))
        dataset.labels.append(int(label))
    if len(set(dataset.labels)) != 2:
        raise DataError(f"{path}: matching needs both matching (1) and non-matching (0) pairs")
    return dataset


def with_mean_recall(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Add ``{prefix}mean_recall``: the mean of the six ``{prefix}i2t_r{k}`` / ``{prefix}t2i_r{k}``."""
    values = [metrics[f"{prefix}{direction}_r{k}"] for direction in ("i2t", "t2i") for k in KS]
    return {**metrics, f"{prefix}mean_recall": sum(values) / len(values)}


def r2d2_reranked_recall(reranker, similarity: torch.Tensor, image_tokens: list[torch.Tensor],
                         text_tokens: list[torch.Tensor], text_to_image: torch.Tensor, top_k: int) -> dict[str, float]:
    """``rerank_{i2t,t2i}_r{k}`` with each query's ``top_k`` candidates ordered by re-ranker score +
    dual-encoder cosine (R2D2's ``compute_cross_score``; candidates outside the top_k rank below)."""
    if top_k < max(KS):
        raise ValueError(f"R@{max(KS)} after re-ranking needs --rerank-top-k >= {max(KS)}, got {top_k}")
    score = PairScorer(reranker, image_tokens, text_tokens)
    is_own_text = text_to_image[None, :] == torch.arange(similarity.shape[0])[:, None]
    results = {}
    for direction, scores, positives in (("i2t", similarity, is_own_text), ("t2i", similarity.T, is_own_text.T)):
        def combined(queries, candidates, scores=scores, direction=direction):
            pairs = (queries, candidates) if direction == "i2t" else (candidates, queries)
            return score(*pairs).float().cpu() + scores[queries, candidates].float().cpu()

        ranked = rerank_topk(scores, top_k, combined)
        within = [k for k in KS if k <= ranked.shape[1]]  # a gallery smaller than k: every candidate is ranked
        recalls = dict(zip(within, ranked_recall(ranked, positives, within)))
        for k in KS:
            results[f"rerank_{direction}_r{k}"] = recalls.get(k, 1.0)
    return results


def evaluate_zero_retrieval(extractor: FeatureExtractor, dataset: RetrievalSet, reranker=None,
                            top_k: int = 128) -> dict[str, float]:
    """R2D2's retrieval metrics (see the module docstring)."""
    requests = [ImageRequest(path, source=where) for path, where in zip(dataset.images, dataset.image_sources)]
    text_to_image = torch.tensor(dataset.text_to_image)
    if reranker is None:
        images = extractor.encode_images(requests, desc=f"{dataset.name} images")
        texts = extractor.encode_texts(dataset.texts, dataset.text_kind, desc=f"{dataset.name} texts")
    else:
        image_tokens, images = extractor.encode_image_tokens(requests, desc=f"{dataset.name} images")
        text_tokens, texts = extractor.encode_text_tokens(dataset.texts, dataset.text_kind,
                                                          desc=f"{dataset.name} texts")
    metrics = with_mean_recall(retrieval_recall(images, texts, text_to_image, KS))
    if reranker is not None:
        metrics.update(with_mean_recall(r2d2_reranked_recall(reranker, images @ texts.T, image_tokens, text_tokens,
                                                             text_to_image, top_k), prefix="rerank_"))
    return {**metrics, "num_images": len(dataset.images), "num_texts": len(dataset.texts)}


# Captions (ICR / ICM) take the long path, short search queries (IQR / IQM) the short one.
TEXT_KINDS = {"zero_icr": "long", "zero_iqr": "short", "zero_icm": "long", "zero_iqm": "short"}


def prepare_zero_retrieval(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_zero_retrieval(paths["ann"], paths["images"], TEXT_KINDS[spec.name], spec.name,
                                            allow_outside_root=options.allow_outside_root))


def prepare_zero_matching(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_zero_matching(paths["ann"], paths["images"], TEXT_KINDS[spec.name], spec.name,
                                           allow_outside_root=options.allow_outside_root))


def score_zero_retrieval(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_zero_retrieval(extractor, prepared.payload, context.reranker,
                                                    context.rerank_top_k)}


def score_zero_matching(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_matching(extractor, prepared.payload, context.reranker)}
