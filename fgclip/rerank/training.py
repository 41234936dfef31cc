"""Training the cross-encoder re-ranker on a frozen dual encoder, R2D2's way: 2-class matching on
every positive pair and on hard negatives sampled from the dual encoder's similarities."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..modeling_fgclip import TokenFeatures
from ..data.datasets import IMAGE_KEYS
from .modeling_reranker import CrossEncoderReranker


def sample_hard_negatives(similarity: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` negatives per row of a square similarity matrix (row i's positive is column i).

    Negatives are drawn without replacement with probability ``softmax(similarity[i])`` over the
    other columns, so the most confusable ones are the likeliest (as R2D2 and ALBEF sample).

    Returns:
        (N, count) column indices, never the row's own.
    """
    size = similarity.shape[0]
    if similarity.shape != (size, size):
        raise ValueError(f"similarity must be square (row i matches column i), got {tuple(similarity.shape)}")
    if count > size - 1:
        raise ValueError(f"cannot draw {count} negatives per row from a batch of {size}")
    weights = torch.softmax(similarity.detach().float(), dim=1) + torch.finfo(torch.float32).tiny  # all drawable
    weights.fill_diagonal_(0.0)
    return torch.multinomial(weights.cpu(), count, replacement=False, generator=generator).to(similarity.device)


class RerankerForTraining(nn.Module):
    """Cross-encoder re-ranker + its matching loss over a frozen FG-CLIP / FG-CLIP 2 dual encoder.

    Per step, for B images and their captions (``text_kind``: ``"long"`` or ``"short"``): the
    dual encoder gives token features and global similarities (no gradient); each image gets
    ``negatives`` hard-negative captions and each caption ``negatives`` hard-negative images;
    both cross encoders classify the B positive and 2 * B * negatives negative pairs, and the
    loss is the sum of their cross-entropies. ``forward`` takes a
    :class:`~fgclip.data.FineHARDCollator` batch (boxes and region texts are not used).
    """

    accepts_loss_kwargs = False

    def __init__(self, dual_encoder: nn.Module, reranker: CrossEncoderReranker, text_kind: str = "long",
                 negatives: int = 2, seed: int = 0):
        super().__init__()
        if text_kind not in ("long", "short"):
            raise ValueError(f"text_kind must be 'long' or 'short', got {text_kind!r}")
        self.dual_encoder = dual_encoder.eval().requires_grad_(False)
        self.reranker = reranker
        self.text_kind = text_kind
        self.negatives = negatives
        self.seed = seed
        # Steps taken, in the state dict: the negatives of step n are drawn from (seed, rank, n), so a
        # resumed run draws what the uninterrupted one would have.
        self.steps = nn.Buffer(torch.zeros((), dtype=torch.long))

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, distributed.get_rank(), int(self.steps))) % 2**63)

    @property
    def config(self):
        return self.reranker.config

    def train(self, mode: bool = True):
        super().train(mode)
        self.dual_encoder.eval()  # frozen, dropout and all
        return self

    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> tuple[TokenFeatures, TokenFeatures]:
        """Token features of the batch's images and of their ``text_kind`` captions."""
        model = self.dual_encoder
        kind = self.text_kind
        if kind == "long":
            ids, mask = batch["long_input_ids"], batch.get("long_attention_mask")
        else:
            rows = batch["short_text_inverse"][slice(*batch["short_text_ranges"]["short"])]
            ids = batch["short_input_ids"][rows]
            mask = batch["short_attention_mask"][rows] if "short_attention_mask" in batch else None
        images = model.get_image_tokens(**{key: batch[key] for key in IMAGE_KEYS if key in batch})
        return images, model.get_text_tokens(ids, mask, kind)

    def forward(self, **batch) -> dict[str, Any]:
        images, texts = self.encode(batch)
        size = images.tokens.shape[0]
        similarity = F.normalize(images.embeds.float(), dim=-1) @ F.normalize(texts.embeds.float(), dim=-1).T
        generator = self._generator()
        self.steps += 1
        hard_texts = sample_hard_negatives(similarity, self.negatives, generator)  # per image
        hard_images = sample_hard_negatives(similarity.T, self.negatives, generator)  # per text
        own = torch.arange(size, device=similarity.device)
        image_index = torch.cat([own, own.repeat_interleave(self.negatives), hard_images.reshape(-1)])
        text_index = torch.cat([own, hard_texts.reshape(-1), own.repeat_interleave(self.negatives)])
        labels = (image_index == text_index).long()
        output = self.reranker(images.tokens[image_index], images.mask[image_index],
                               texts.tokens[text_index], texts.mask[text_index])
        terms = {"text_queries": F.cross_entropy(output.text_query_logits.float(), labels),
                 "image_queries": F.cross_entropy(output.image_query_logits.float(), labels)}
        return {"loss": terms["text_queries"] + terms["image_queries"],
                "terms": {name: value.detach() for name, value in terms.items()}}
