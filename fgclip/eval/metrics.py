"""Metrics of the benchmarks, all built on one notion of rank.

The rank of a target is the number of candidates scoring strictly higher than it, so a
target is in the top k when its rank is below k. Ties are resolved in the target's favour
(as upstream FG-OVD does, which counts the positive as found when it equals the maximum),
and the result does not depend on the order of the candidates.
"""
from __future__ import annotations

from typing import Sequence

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) scores, (N,) target columns -> (N,) number of columns scoring above the target."""
    target_scores = scores.gather(1, targets.long()[:, None])
    return (scores > target_scores).sum(dim=1)


def topk_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of ranks below each ``k``, as ``{"top1": ..., "top5": ...}``."""
    if ranks.shape[0] == 0:
        raise ValueError("no samples to score")
    return {f"top{k}": (ranks < k).double().mean().item() for k in ks}


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose target column is among the ``k`` best."""
    return topk_from_ranks(target_ranks(scores, targets), ks)


def classification_ranks(
    features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor, chunk: int = 8192
) -> torch.Tensor:
    """Ranks of the true class for (N, D) embeddings against a (C, D) classifier, in row chunks
    (N x C scores are never held at once: LVIS has 1203 classes for about 244k boxes)."""
    labels = labels.long()
    pieces = [
        target_ranks(features[start : start + chunk] @ classifier.t(), labels[start : start + chunk])
        for start in range(0, features.shape[0], chunk)
    ]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def multiple_choice_accuracy(positive: torch.Tensor, negatives: torch.Tensor, valid: torch.Tensor) -> float:
    """FG-OVD accuracy: the positive scores at least as high as every negative.

    Args:
        positive: (N,) score of each item's positive caption.
        negatives: (N, M) scores of its negatives, padded where ``valid`` (N, M) is False
            (items may have different numbers of negatives).
    """
    if positive.shape[0] == 0:
        raise ValueError("no items to score")
    beaten = (negatives > positive[:, None]) & valid
    return (~beaten.any(dim=1)).double().mean().item()


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 256,
) -> dict[str, float]:
    """Recall@k in both directions for images with one or more captions; scores are dot products.

    Args:
        image_features: (I, D); text_features: (T, D).
        text_to_image: (T,) the image of each text; every image must own at least one text.
    Returns:
        ``i2t_r{k}``: fraction of images with at least one of their captions in the top k texts;
        ``t2i_r{k}``: fraction of texts whose image is in the top k images.
        The (I, T) score matrix is built ``chunk`` rows at a time.
    """
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    text_to_image = text_to_image.long()
    if text_to_image.shape != (num_texts,) or num_images == 0:
        raise ValueError("text_to_image must give one image per text, and there must be images")
    if bool((torch.bincount(text_to_image, minlength=num_images) == 0).any()):
        raise ValueError("every image needs at least one text")
    image_ranks = torch.empty(num_images, dtype=torch.long)
    for start in range(0, num_images, chunk):
        rows = image_features[start : start + chunk] @ text_features.t()
        own = text_to_image[None, :] == torch.arange(start, start + rows.shape[0])[:, None]
        best_own = rows.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
        image_ranks[start : start + rows.shape[0]] = (rows > best_own).sum(dim=1)
    text_ranks = torch.empty(num_texts, dtype=torch.long)
    for start in range(0, num_texts, chunk):
        columns = text_features[start : start + chunk] @ image_features.t()
        text_ranks[start : start + columns.shape[0]] = target_ranks(columns, text_to_image[start : start + chunk])
    metrics = {f"i2t_r{k}": (image_ranks < k).double().mean().item() for k in ks}
    metrics.update({f"t2i_r{k}": (text_ranks < k).double().mean().item() for k in ks})
    return metrics
