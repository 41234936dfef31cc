"""Image-text retrieval: Recall@1/5/10, image-to-text and text-to-image.

An image may own several captions (COCO: 5, Flickr30k: 5): image-to-text counts a hit when
any of its captions is in the top k; text-to-image ranks each caption's own image.
Captions of the same image file are grouped whatever the file format.

Readers (each returns a :class:`RetrievalSet`):

* :func:`load_sharegpt4v`: ShareGPT4V JSON list; the first 1000 records, text = the first
  ``gpt`` turn of ``conversations``, image = ``image`` under the image root (or its base name
  there, as upstream keeps the images in one folder). Long texts.
* :func:`load_dci`: DCI annotation folder, one JSON per image with ``image`` and
  ``extra_caption``. Long texts.
* :func:`load_caption_file`: COCO captions json (``captions_val2017.json``: 5k images),
  Karpathy split files (``dataset_coco.json`` / ``dataset_flickr30k.json``, ``test`` split)
  or BLIP-style lists (``[{"image", "caption": [...]}]``, e.g. ``flickr30k_test.json``);
  at most ``max_captions`` per image (5, as upstream). Short texts.
* :func:`load_tsv`: ``image<TAB>caption`` lines (Chinese benchmarks such as COCO-CN or
  Flickr30k-CNA); any language, the model's tokenizer decides.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from ..rerank.ranking import ranked_recall, rerank_topk
from .spec import Prepared, ScoreContext, single
from .common import DataError, ImageRequest, coco_image_path, iter_tsv, read_json, require, require_text, resolve_image
from .features import FeatureExtractor
from .metrics import retrieval_recall

logger = logging.getLogger(__name__)

SHAREGPT4V_SIZE = 1000


@dataclass
class RetrievalSet:
    """Images and captions; ``text_to_image[t]`` is the index in ``images`` of caption ``t``."""

    name: str
    source: str
    images: list[str]
    texts: list[str]
    text_to_image: list[int]
    text_kind: str
    image_sources: list[str]


class _Builder:
    """Groups captions by image path, in first-seen order."""

    def __init__(self, max_captions: int | None = None):
        self.max_captions = max_captions
        self.index: dict[str, int] = {}
        self.images: list[str] = []
        self.sources: list[str] = []
        self.texts: list[str] = []
        self.text_to_image: list[int] = []
        self.counts: list[int] = []

    def add(self, image: str, captions: list[str], where: str) -> None:
        if image not in self.index:
            self.index[image] = len(self.images)
            self.images.append(image)
            self.sources.append(where)
            self.counts.append(0)
        image_index = self.index[image]
        for caption in captions:
            if self.max_captions is not None and self.counts[image_index] >= self.max_captions:
                break
            self.texts.append(caption)
            self.text_to_image.append(image_index)
            self.counts[image_index] += 1

    def build(self, name: str, source: str, text_kind: str) -> RetrievalSet:
        if not self.texts:
            raise DataError(f"{source}: no image-caption pairs")
        return RetrievalSet(name, source, self.images, self.texts, self.text_to_image, text_kind, self.sources)


def load_sharegpt4v(
    json_file: str | os.PathLike, image_root: str | os.PathLike, limit: int = SHAREGPT4V_SIZE,
    allow_outside_root: bool = False,
) -> RetrievalSet:
    """ShareGPT4V-1k: the first ``limit`` records of a share-captioner JSON list (all of them when it holds
    fewer, as the official script's ``[:1000]`` takes them, with a warning: the result is then not
    ShareGPT4V-1k's)."""
    data = read_json(json_file)
    if not isinstance(data, list):
        raise DataError(f"{json_file}: expected a JSON list of records")
    if len(data) < limit:
        logger.warning("%s: %d records, fewer than the %d of the benchmark: scoring all %d (as the official "
                       "script's [:%d] does); the result is not comparable to the benchmark's", json_file,
                       len(data), limit, len(data), limit)
    builder = _Builder()
    for index, record in enumerate(data[:limit]):
        where = f"{json_file} record {index}"
        relative = require_text(record, "image", where)
        turns = require(record, "conversations", where, list)
        answers = [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
        if not answers or not isinstance(answers[0], str) or not answers[0].strip():
            raise DataError(f"{where}: 'conversations' has no 'gpt' turn with a caption")
        builder.add(resolve_image(image_root, relative, where, basename_fallback=True,
                                  allow_outside_root=allow_outside_root), [answers[0]], where)
    return builder.build("sharegpt4v", str(json_file), "long")


def load_dci(annotation_dir: str | os.PathLike, image_root: str | os.PathLike,
             allow_outside_root: bool = False) -> RetrievalSet:
    """DCI: every ``*.json`` of ``annotation_dir`` (sorted) gives ``image`` and ``extra_caption``."""
    directory = Path(annotation_dir)
    if not directory.is_dir():
        raise DataError(f"{directory}: annotation folder not found")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DataError(f"{directory}: no .json annotation files")
    builder = _Builder()
    for path in files:
        record = read_json(path)
        where = str(path)
        relative = require_text(record, "image", where)
        caption = require_text(record, "extra_caption", where)
        builder.add(resolve_image(image_root, relative, where, allow_outside_root=allow_outside_root), [caption], where)
    return builder.build("dci", str(directory), "long")


def load_caption_file(
    path: str | os.PathLike, image_root: str | os.PathLike, name: str, max_captions: int | None = 5,
    split: str = "test", allow_outside_root: bool = False,
) -> RetrievalSet:
    """COCO captions json, Karpathy split json or BLIP-style list (format detected from the content)."""
    data = read_json(path)
    builder = _Builder(max_captions)
    if isinstance(data, dict) and "annotations" in data:
        _read_coco_captions(data, path, image_root, builder, allow_outside_root=allow_outside_root)
    elif isinstance(data, dict) and "images" in data:
        _read_karpathy(data, path, image_root, builder, split, allow_outside_root=allow_outside_root)
    elif isinstance(data, list):
        for index, record in enumerate(data):
            where = f"{path} record {index}"
            image = resolve_image(image_root, require_text(record, "image", where), where, basename_fallback=True,
                                  allow_outside_root=allow_outside_root)
            captions = require(record, "caption", where, (str, list))
            builder.add(image, _captions(captions, "caption", where), where)
    else:
        raise DataError(
            f"{path}: unknown caption format (expected COCO captions with 'images' and 'annotations', "
            "a Karpathy split file with 'images', or a list of {'image', 'caption'} records)"
        )
    return builder.build(name, str(path), "short")


def _captions(value, key: str, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    for index, caption in enumerate(values):
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{where}: {key}[{index}] must be a non-empty string")
    if not values:
        raise DataError(f"{where}: {key!r} is empty")
    return values


def _read_coco_captions(data: dict, path, image_root, builder: _Builder, allow_outside_root: bool = False) -> None:
    images = {}
    for index, image in enumerate(require(data, "images", str(path), list)):
        where = f"{path} images[{index}]"
        images[require(image, "id", where)] = (image, where)
    captions: dict = {}
    for index, annotation in enumerate(require(data, "annotations", str(path), list)):
        where = f"{path} annotations[{index}]"
        image_id = require(annotation, "image_id", where)
        if image_id not in images:
            raise DataError(f"{where}: unknown image_id {image_id!r} (not in 'images')")
        captions.setdefault(image_id, []).append(require_text(annotation, "caption", where))
    for image_id, (image, where) in images.items():
        if image_id in captions:
            builder.add(resolve_image(image_root, coco_image_path(image, where), where,
                                      allow_outside_root=allow_outside_root), captions[image_id], where)


def _read_karpathy(data: dict, path, image_root, builder: _Builder, split: str,
                   allow_outside_root: bool = False) -> None:
    for index, image in enumerate(require(data, "images", str(path), list)):
        where = f"{path} images[{index}]"
        if require(image, "split", where) != split:
            continue
        relative = require_text(image, "filename", where)
        if image.get("filepath"):
            relative = f"{image['filepath']}/{relative}"
        sentences = require(image, "sentences", where, list)
        texts = [require_text(s, "raw", f"{where} sentences[{i}]") for i, s in enumerate(sentences)]
        image_path = resolve_image(image_root, relative, where, basename_fallback=True,
                                   allow_outside_root=allow_outside_root)
        builder.add(image_path, _captions(texts, "sentences", where), where)


def load_tsv(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, text_kind: str = "short",
    name: str | None = None, allow_outside_root: bool = False,
) -> RetrievalSet:
    """``image<TAB>caption`` lines; images relative to ``image_root`` (default: the file's folder)."""
    path = Path(path)
    image_root = path.parent if image_root is None else image_root
    builder = _Builder()
    for where, (image, caption) in iter_tsv(path, ("image", "caption")):
        builder.add(resolve_image(image_root, image, where, allow_outside_root=allow_outside_root), [caption], where)
    return builder.build(name or path.stem, str(path), text_kind)


def evaluate_retrieval(
    extractor: FeatureExtractor, dataset: RetrievalSet, reranker=None, top_k: int = 128
) -> dict[str, float]:
    """Recall@1/5/10 in both directions, with the dataset's text path.

    With a :class:`~fgclip.rerank.CrossEncoderReranker`, each query's ``top_k`` dual-encoder
    candidates are re-ranked by it and ``rerank_*`` recalls are added (R2D2's pre-rank + rank).
    """
    requests = [ImageRequest(path, source=where) for path, where in zip(dataset.images, dataset.image_sources)]
    text_to_image = torch.tensor(dataset.text_to_image)
    if reranker is None:
        images = extractor.encode_images(requests, desc=f"{dataset.name} images")
        texts = extractor.encode_texts(dataset.texts, dataset.text_kind, desc=f"{dataset.name} captions")
        metrics = retrieval_recall(images, texts, text_to_image)
    else:  # one pass gives both the tokens the re-ranker reads and the global embeddings
        image_tokens, images = extractor.encode_image_tokens(requests, desc=f"{dataset.name} images")
        text_tokens, texts = extractor.encode_text_tokens(dataset.texts, dataset.text_kind,
                                                          desc=f"{dataset.name} captions")
        metrics = retrieval_recall(images, texts, text_to_image)
        metrics.update(reranked_recall(reranker, images @ texts.T, image_tokens, text_tokens, text_to_image, metrics,
                                       top_k))
    return {**metrics, "num_images": len(dataset.images), "num_texts": len(dataset.texts)}


def reranked_recall(
    reranker, similarity: torch.Tensor, image_tokens: list[torch.Tensor], text_tokens: list[torch.Tensor],
    text_to_image: torch.Tensor, dual_metrics: dict[str, float], top_k: int, ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """``rerank_i2t_r{k}`` / ``rerank_t2i_r{k}``: recall after re-ranking each query's ``top_k``.

    Re-ranking only permutes the top ``top_k``, so for ``k >= top_k`` the recall is the dual
    encoder's (``dual_metrics``).
    """
    score = PairScorer(reranker, image_tokens, text_tokens)
    is_own_text = text_to_image[None, :] == torch.arange(similarity.shape[0])[:, None]
    results = {}
    for direction, scores, positives, scorer in (
        ("i2t", similarity, is_own_text, score),
        ("t2i", similarity.T, is_own_text.T, lambda texts, images: score(images, texts)),
    ):
        ranked = rerank_topk(scores, top_k, scorer)
        within = [k for k in ks if k <= ranked.shape[1]]
        recalls = dict(zip(within, ranked_recall(ranked, positives, within))) if within else {}
        for k in ks:
            results[f"rerank_{direction}_r{k}"] = recalls.get(k, dual_metrics[f"{direction}_r{k}"])
    return results


class PairScorer:
    """``(image index (P,), text index (P,)) -> (P,)`` re-ranker scores from per-item token lists."""

    def __init__(self, reranker, image_tokens: list[torch.Tensor], text_tokens: list[torch.Tensor]):
        self.reranker = reranker.eval()
        self.image_tokens, self.text_tokens = image_tokens, text_tokens
        parameter = next(reranker.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    def _padded(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = pad_sequence([torch.ones(len(row), dtype=torch.long) for row in rows], batch_first=True)
        tokens = pad_sequence(rows, batch_first=True)
        return tokens.to(self.device, self.dtype), mask.to(self.device)

    @torch.inference_mode()
    def __call__(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        images = self._padded([self.image_tokens[i] for i in image_index.tolist()])
        texts = self._padded([self.text_tokens[t] for t in text_index.tolist()])
        return self.reranker(*images, *texts).scores


def prepare_sharegpt4v(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_sharegpt4v(paths["ann"], paths["images"], limit=options.sharegpt4v_limit,
                                        allow_outside_root=options.allow_outside_root))


def prepare_dci(spec, paths: dict, options) -> list[Prepared]:
    return single(spec, load_dci(paths["ann"], paths["images"], allow_outside_root=options.allow_outside_root))


def prepare_caption_file(spec, paths: dict, options) -> list[Prepared]:
    """COCO captions or Flickr30k (Karpathy) files; ``spec.name`` tells which."""
    return single(spec, load_caption_file(paths["ann"], paths["images"], spec.name, max_captions=options.max_captions,
                                          allow_outside_root=options.allow_outside_root))


def prepare_tsv_dir(spec, paths: dict, options) -> list[Prepared]:
    """One benchmark per ``image<TAB>caption`` file of ``paths["dir"]``."""
    files = sorted(Path(paths["dir"]).glob("*.tsv"))
    if not files:
        raise DataError(f"{paths['dir']}: no .tsv files")
    return [Prepared(spec, f"{spec.label}/{f.stem}",
                     load_tsv(f, text_kind=options.tsv_text_kind, allow_outside_root=options.allow_outside_root))
            for f in files]


def score_retrieval(extractor, prepared: Prepared, context: ScoreContext) -> dict[str, dict[str, float]]:
    return {prepared.label: evaluate_retrieval(extractor, prepared.payload, context.reranker, context.rerank_top_k)}
