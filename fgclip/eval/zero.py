"""Zero / CCMB downstream sets (Xie et al., "CCMB: A Large-scale Chinese Cross-modal Benchmark"), read
from their released files as the authors' code (github.com/yuxie11/R2D2, c7127fa) reads them.

Released layout (the repository's README; zero.so.com/detail.html gives the fields)::

    IQR_IQM_ICR_ICM_images/           every image of the four Zero sets, one folder
    ICR/val/long_itr_val.json         retrieval, JSON lines {"text", "image_path"} (long captions)
    IQR/val/short_itr_val.json        retrieval, JSON lines {"text", "image_path"} (short search queries)
    ICM/val/long_itm_val.json         matching, JSON lines {"text", "image_path", "label"}
    IQM/val/short_itm_val.json        matching, JSON lines {"text", "image_path", "label"}

As the authors' loaders: only the base name of ``image_path`` is used (looked up in the image
folder) and captions of one image are grouped in first-seen order, an image keyed by its base name
without the last four characters (their ``img_fn``). The authors evaluate ICR / IQR
on the ``val`` file (their ``test`` split reads it too), ICM / IQM on ``val``.

Flickr30k-CNA, the fifth set, is released as a token file (``<image id>#n<TAB><caption>`` lines,
images ``<image id>.jpg``), the layout FG-CLIP 2's script reads too. Benchmark ``flickr30k_cna_r2d2``
reads it as the authors' ``flickr30k_cna_retrieval_eval`` (images in first-seen order, each caption its
own text, any number per image) and scores it as the retrieval sets below, re-ranking included;
``flickr30k_cna`` (:mod:`fgclip.eval.chinese`) scores it as FG-CLIP 2's script, which equals the
authors' ``itm_eval`` for five captions per image and scores without ties.

Metrics, as the authors' scripts compute them (tests/test_r2d2_zero.py holds the values their functions
printed):

* retrieval (``train_r2d2_retrieval.py::itm_eval``): R@1/5/10 image-to-text and text-to-image and
  ``mean_recall`` (their ``r_mean``, the paper's MR). Fractions here; the paper prints percentages.
  Each query's candidates are ranked as their ``np.argsort(row)[::-1]``: tied scores put the later
  candidate first (numpy's sort of their time is stable up to 16 candidates; beyond that, and on newer
  numpy with AVX-512, their order of tied scores is the sort's own), not in the target's favour as the
  other benchmarks; the text-to-image scores are the transpose of the image-to-text ones. The authors
  report only re-ranked recalls; the plain ones here are ``itm_eval`` of the dual-encoder similarity.
  With a re-ranker (``compute_cross_score``), each query's ``top_k`` most similar candidates score the
  cross encoders' mean matching probability *plus* the dual-encoder similarity and all others -100, and
  ``rerank_*`` recalls are ranked the same way; their configs use ``top_k`` 64 for ICR / IQR, 128 for
  Flickr30k-CNA (``--rerank-top-k``). A ``top_k`` below 10 is allowed, as theirs: the -100 ties fill the
  ranks after it, later candidate first;
* matching (``train_r2d2_matching.py::Lite.eval``): ROC AUC of the pairs' scores against the labels
  (:func:`fgclip.eval.matching.matching_auc`, scikit-learn's: tied scores count half): the dual-encoder
  cosine, ``auc``, and with a re-ranker its mean matching probability, ``rerank_auc``, the authors' score.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .common import DataError, ImageRequest, iter_jsonl, iter_tsv, require, require_text, resolve_image
from .features import FeatureExtractor
from .matching import MatchingSet, evaluate_matching
from .retrieval import PairScorer, RetrievalSet, _Builder
from .spec import Prepared, ScoreContext, single

KS = (1, 5, 10)
PairScores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _image_name(record: dict, where: str) -> str:
    """The base name of ``image_path`` (the authors' ``image_path.split('/')[-1]``)."""
    name = require_text(record, "image_path", where).split("/")[-1]
    if not name:
        raise DataError(f"{where}: 'image_path' has no file name")
    return name


def load_zero_retrieval(path: str | os.PathLike, image_root: str | os.PathLike, text_kind: str,
                        name: str | None = None, allow_outside_root: bool = False) -> RetrievalSet:
    """ICR / IQR: JSON lines ``{"text", "image_path"}``; captions grouped as the authors' ``img_fn``, the base
    name without its last four characters (``a.jpg`` and ``a.png`` are one image, the first-seen file)."""
    builder = _Builder()
    first_file: dict[str, str] = {}
    for where, record in iter_jsonl(path):
        name = _image_name(record, where)
        name = first_file.setdefault(name[:-4], name)
        image = resolve_image(image_root, name, where, allow_outside_root=allow_outside_root)
        builder.add(image, [require_text(record, "text", where)], where)
    return builder.build(name or Path(path).stem, str(path), text_kind)


def load_zero_flickr30k_cna(path: str | os.PathLike, image_root: str | os.PathLike, name: str | None = None,
                            allow_outside_root: bool = False) -> RetrievalSet:
    """Flickr30k-CNA token file, ``<image id>#<n><TAB><caption>`` lines (images ``<image id>.jpg``), as
    the authors' ``flickr30k_cna_retrieval_eval``: images in first-seen order, captions on the short path."""
    builder = _Builder()
    for where, (key, caption) in iter_tsv(path, ("<image id>#<n>", "caption")):
        image = resolve_image(image_root, f"{key.split('#')[0]}.jpg", where, allow_outside_root=allow_outside_root)
        builder.add(image, [caption], where)
    return builder.build(name or Path(path).stem, str(path), "short")


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


def _first_hits(scores: torch.Tensor, candidate_owner: torch.Tensor, query_owner: torch.Tensor,
                chunk: int = 256) -> torch.Tensor:
    """(Q, min(10, C)) bool: is the n-th candidate of each query's ranking one of its positives.

    A row is ranked as the authors' ``np.argsort(row)[::-1]``: best first, tied scores the later column
    first (the reverse of a stable ascending sort, which numpy's sort of their time is up to 16 columns).
    """
    depth = min(max(KS), scores.shape[1])
    hits = []
    for start in range(0, scores.shape[0], chunk):
        order = scores[start : start + chunk].float().argsort(dim=1, stable=True).flip(1)[:, :depth]
        hits.append(candidate_owner[order] == query_owner[start : start + chunk, None])
    return torch.cat(hits)


def r2d2_recall(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor, text_to_image: torch.Tensor,
                prefix: str = "") -> dict[str, float]:
    """R2D2's ``itm_eval`` as fractions: ``{prefix}i2t_r{k}`` (an image hits when one of its texts is among
    its first k), ``{prefix}t2i_r{k}`` (a text hits when its image is) and ``{prefix}mean_recall``.

    Args:
        scores_i2t: (I, T) scores of each image against every text; scores_t2i: (T, I).
        text_to_image: (T,) the image of each text.
    """
    text_to_image = text_to_image.long()
    images = torch.arange(scores_i2t.shape[0])
    recalls = {}
    for direction, hits in (("i2t", _first_hits(scores_i2t, text_to_image, images)),
                            ("t2i", _first_hits(scores_t2i, images, text_to_image))):
        for k in KS:
            recalls[f"{prefix}{direction}_r{k}"] = hits[:, :k].any(dim=1).double().mean().item()
    # r_mean = (tr_mean + ir_mean) / 2, each the mean of its three recalls
    means = [sum(recalls[f"{prefix}{direction}_r{k}"] for k in KS) / len(KS) for direction in ("i2t", "t2i")]
    return {**recalls, f"{prefix}mean_recall": (means[0] + means[1]) / 2}


def r2d2_cross_scores(pair_score: PairScores, similarity: torch.Tensor, top_k: int,
                      pairs_per_call: int = 512) -> torch.Tensor:
    """R2D2's ``compute_cross_score`` for (Q, C) query-candidate similarities: -100 everywhere except each
    query's ``top_k`` most similar candidates, which get ``pair_score(queries, candidates) + similarity``."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    num_queries, num_candidates = similarity.shape
    k = min(top_k, num_candidates)
    top_similarity, candidates = similarity.float().topk(k, dim=1)
    queries, flat = torch.arange(num_queries).repeat_interleave(k), candidates.reshape(-1)
    scores = torch.cat([pair_score(queries[start : start + pairs_per_call], flat[start : start + pairs_per_call])
                        .float().cpu() for start in range(0, flat.numel(), pairs_per_call)])
    cross = torch.full((num_queries, num_candidates), -100.0)
    return cross.scatter_(1, candidates, scores.reshape(num_queries, k) + top_similarity)


def r2d2_reranked_recall(pair_score: PairScores, similarity: torch.Tensor, text_to_image: torch.Tensor,
                         top_k: int) -> dict[str, float]:
    """``rerank_*`` recalls of :func:`r2d2_recall` over the cross scores of both directions.

    Args:
        pair_score: ``(image index (P,), text index (P,)) -> (P,)`` re-ranker scores (the mean matching
            probability of R2D2's two heads).
        similarity: (I, T) dual-encoder scores; its transpose ranks the images of each text, as the authors'.
    """
    scores_i2t = r2d2_cross_scores(pair_score, similarity, top_k)
    scores_t2i = r2d2_cross_scores(lambda texts, images: pair_score(images, texts), similarity.T, top_k)
    return r2d2_recall(scores_i2t, scores_t2i, text_to_image, prefix="rerank_")


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
    similarity = (images @ texts.T).float().cpu()
    metrics = r2d2_recall(similarity, similarity.T, text_to_image)
    if reranker is not None:
        metrics.update(r2d2_reranked_recall(PairScorer(reranker, image_tokens, text_tokens), similarity,
                                            text_to_image, top_k))
    return {**metrics, "num_images": len(dataset.images), "num_texts": len(dataset.texts)}


# Captions (ICR / ICM) take the long path, short search queries (IQR / IQM) the short one.
TEXT_KINDS = {"zero_icr": "long", "zero_iqr": "short", "zero_icm": "long", "zero_iqm": "short"}


def prepare_zero_retrieval(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_zero_retrieval(paths["ann"], paths["images"], TEXT_KINDS[spec.name], spec.name,
                                            allow_outside_root=options.allow_outside_root))


def prepare_zero_flickr30k_cna(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_zero_flickr30k_cna(paths["ann"], paths["images"], spec.name,
                                                allow_outside_root=options.allow_outside_root))


def prepare_zero_matching(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_zero_matching(paths["ann"], paths["images"], TEXT_KINDS[spec.name], spec.name,
                                           allow_outside_root=options.allow_outside_root))


def score_zero_retrieval(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_zero_retrieval(extractor, prepared.payload, context.reranker,
                                                    context.rerank_top_k)}


def score_zero_matching(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_matching(extractor, prepared.payload, context.reranker)}
