"""Pre-rank with the dual encoder, re-rank the top candidates with a pair scorer, and score recall."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rerank_topk(similarity: torch.Tensor, top_k: int, score_pairs: PairScorer, pairs_per_call: int = 512) -> torch.Tensor:
    """Each query's ``top_k`` candidates by ``similarity``, re-ordered by ``score_pairs``.

    Args:
        similarity: (Q, C) dual-encoder scores of every query against every candidate.
        score_pairs: ``(query_index (P,), candidate_index (P,)) -> (P,)`` scores, higher is better;
            called with at most ``pairs_per_call`` pairs.
    Returns:
        (Q, min(top_k, C)) candidate indices, best first; ties keep the dual-encoder order.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    num_queries, num_candidates = similarity.shape
    k = min(top_k, num_candidates)
    candidates = similarity.topk(k, dim=1).indices
    queries = torch.arange(num_queries).repeat_interleave(k)
    flat = candidates.reshape(-1).cpu()
    scores = torch.cat([
        score_pairs(queries[start : start + pairs_per_call], flat[start : start + pairs_per_call]).float().cpu()
        for start in range(0, flat.numel(), pairs_per_call)
    ]).reshape(num_queries, k)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return candidates.cpu().gather(1, order)


def ranked_recall(ranked: torch.Tensor, is_positive: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """Fraction of queries with a positive among the first k of ``ranked``, for each k.

    Args:
        ranked: (Q, K) candidate indices, best first.
        is_positive: (Q, C) bool, True where a candidate is a positive of the query.
    """
    if max(ks) > ranked.shape[1]:
        raise ValueError(f"recall@{max(ks)} needs at least {max(ks)} ranked candidates, got {ranked.shape[1]}")
    hits = is_positive.gather(1, ranked)
    return [hits[:, :k].any(dim=1).double().mean().item() for k in ks]
