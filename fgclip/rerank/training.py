"""Training the cross-encoder re-ranker R2D2's way: 2-class matching on every positive pair and on
hard negatives sampled from the dual encoder's similarities over the whole (all-rank) batch,
optionally with R2D2's global contrastive pre-ranking on the dual encoder and its two-way
distillation (target- and feature-guided, from a momentum teacher)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..data.datasets import IMAGE_KEYS
from ..modeling_common import TokenFeatures
from .distillation import (
    Distillation,
    FeatureQueues,
    ema_update,
    feature_distillation_loss,
    make_teacher,
    mask_tokens,
    soft_cross_entropy,
    soft_targets,
)
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


def gather_tokens(features: TokenFeatures) -> TokenFeatures:
    """Every rank's token features (rank order), padded along the token axis to the longest rank's
    length; gradients flow back to every rank (:func:`fgclip.distributed.all_gather_with_grad`)."""
    if distributed.get_world_size() == 1:
        return features
    sizes = distributed.gather_counts(features.tokens.shape[0], features.tokens.device)
    if len(set(sizes)) > 1:
        raise ValueError(f"re-ranker training needs equal batches on every rank, got {sizes} "
                         "(set training.dataloader_drop_last=true)")
    length = max(distributed.gather_counts(features.tokens.shape[1], features.tokens.device))
    pad = length - features.tokens.shape[1]
    tokens = F.pad(features.tokens, (0, 0, 0, pad))
    mask = F.pad(features.mask, (0, pad))
    return TokenFeatures(tokens=distributed.all_gather_with_grad(tokens),
                         mask=distributed.all_gather_with_grad(mask.to(tokens.dtype)).to(features.mask.dtype),
                         embeds=distributed.all_gather_with_grad(features.embeds))


@torch.no_grad()
def embedding_width(dual_encoder: nn.Module, text_kind: str) -> int:
    """Width of the dual encoder's global embeddings: one pooled text state through its projection."""
    weight = next(dual_encoder.parameters())
    state = torch.zeros(1, dual_encoder.config.text_config.hidden_size, dtype=weight.dtype, device=weight.device)
    return dual_encoder.project_text(state, text_kind).shape[-1]


class RerankerForTraining(nn.Module):
    """Cross-encoder re-ranker + its matching loss over an FG-CLIP / FG-CLIP 2 dual encoder.

    Per step, for B images and their captions per rank (``text_kind``: ``"long"`` or ``"short"``):
    the dual encoder gives token features and global embeddings, gathered over ranks (N = B x
    world size); with one generator shared by all ranks, each of the N images gets ``negatives``
    hard-negative captions and each caption ``negatives`` hard-negative images from the global
    similarities, and each rank classifies its own B positive and 2 * B * negatives negative
    pairs with both cross encoders; the loss is the sum of their cross-entropies, the matching
    class weighted by the config's ``positive_weight`` (so 2 ranks equal 1 process on the joined
    batch). R2D2's fine-tuning code draws 1 negative per direction and weighs positives 2.
    ``forward`` takes a :class:`~fgclip.data.FineHARDCollator` batch (boxes and region texts are
    not used).

    Options (the re-ranker config's fields by default):

    * ``pre_ranking``: the dual encoder trains too, with R2D2's global contrastive loss
      (``pre_ranking`` term: InfoNCE over the gathered batch at the model's ``logit_scale``, mean of
      both directions), and the cross encoders read its tokens with gradients;
    * ``distillation`` (:class:`~fgclip.rerank.distillation.Distillation`): a teacher, the EMA of the
      trained modules (re-ranker, and dual encoder with ``pre_ranking``), held in ``self.teacher`` so
      checkpoints carry it. Target-guided: the ranking targets (and pre-ranking targets) are
      ``(1 - w) * one_hot + w * softmax(teacher logits)`` of the same pairs (rows). Feature-guided: the
      student reads the captions with a ``feature_mask_ratio`` of their tokens hidden, and its pooled
      cross-encoder states regress (MSE, ``feature_distillation`` term) onto the teacher's of the full
      captions. ``queue_size`` (with ``pre_ranking``): ALBEF's queues of the teacher's recent embeddings
      (``self.queues``, seeded by ``seed``) extend the pre-ranking loss: this rank's student rows against
      [the teacher's gathered batch ; the queue] at the model's ``logit_scale``, one-hot targets on the
      batch positive, soft targets from the teacher's rows against the same columns; then the teacher's
      gathered batch is enqueued.
    """

    accepts_loss_kwargs = False

    def __init__(self, dual_encoder: nn.Module, reranker: CrossEncoderReranker, text_kind: str = "long",
                 negatives: int = 2, seed: int = 0, distillation: Distillation | None = None,
                 pre_ranking: bool | None = None):
        super().__init__()
        if text_kind not in ("long", "short"):
            raise ValueError(f"text_kind must be 'long' or 'short', got {text_kind!r}")
        self.pre_ranking = bool(reranker.config.pre_ranking if pre_ranking is None else pre_ranking)
        self.distillation = Distillation.from_config(reranker.config) if distillation is None else distillation
        self.dual_encoder = dual_encoder if self.pre_ranking else dual_encoder.eval().requires_grad_(False)
        self.reranker = reranker
        self.text_kind = text_kind
        self.negatives = negatives
        self.seed = seed
        # Steps taken, in the state dict: the draws of step n come from (seed, n), the same on every rank,
        # so a resumed run draws what the uninterrupted one would have.
        self.steps = nn.Buffer(torch.zeros((), dtype=torch.long))
        self.teacher = None
        if self.distillation.enabled:
            students = {"reranker": reranker, **({"dual_encoder": dual_encoder} if self.pre_ranking else {})}
            self.teacher = nn.ModuleDict({name: make_teacher(module) for name, module in students.items()})
        self.queues = None
        if self.distillation.queue_size:
            if not self.pre_ranking:
                raise ValueError("distill_queue_size: the queues widen the pre-ranking loss; set pre_ranking: true")
            self.queues = FeatureQueues(self.distillation.queue_size, embedding_width(dual_encoder, text_kind), seed)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, int(self.steps))) % 2**63)

    @property
    def config(self):
        return self.reranker.config

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.pre_ranking:
            self.dual_encoder.eval()  # frozen, dropout and all
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def encode(self, batch: dict[str, Any], model: nn.Module | None = None) -> tuple[TokenFeatures, TokenFeatures]:
        """Token features of the batch's images and of their ``text_kind`` captions (by ``model``, the
        dual encoder by default)."""
        model = self.dual_encoder if model is None else model
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
        distill = self.distillation
        if self.training and self.teacher is not None:
            for name, teacher in self.teacher.items():
                ema_update(teacher, getattr(self, name), distill.momentum)
        with torch.set_grad_enabled(self.pre_ranking and torch.is_grad_enabled()):
            local_images, local_texts = self.encode(batch)
        images, texts = gather_tokens(local_images), gather_tokens(local_texts)
        size, offset = local_images.tokens.shape[0], distributed.get_rank() * local_images.tokens.shape[0]
        terms: dict[str, torch.Tensor] = {}

        teacher_images = teacher_texts = None
        if self.teacher is not None:
            with torch.no_grad():
                if self.pre_ranking:
                    teacher_images, teacher_texts = map(gather_tokens, self.encode(batch, self.teacher["dual_encoder"]))
                else:
                    teacher_images, teacher_texts = images, texts
        if self.pre_ranking:
            terms["pre_ranking"] = self._pre_ranking_loss(local_images, local_texts, images, texts,
                                                          teacher_images, teacher_texts, offset)

        generator = self._generator()
        self.steps += 1
        with torch.no_grad():
            similarity = F.normalize(images.embeds.float(), dim=-1) @ F.normalize(texts.embeds.float(), dim=-1).T
        hard_texts = sample_hard_negatives(similarity, self.negatives, generator)[offset : offset + size]  # per image
        hard_images = sample_hard_negatives(similarity.T, self.negatives, generator)[offset : offset + size]  # per text
        own = torch.arange(offset, offset + size, device=similarity.device)
        image_index = torch.cat([own, own.repeat_interleave(self.negatives), hard_images.reshape(-1)])
        text_index = torch.cat([own, hard_texts.reshape(-1), own.repeat_interleave(self.negatives)])
        labels = (image_index == text_index).long()

        student_text_mask = texts.mask
        if distill.feature_weight:
            student_text_mask = mask_tokens(texts.mask, distill.feature_mask_ratio, generator)
        output = self.reranker(images.tokens[image_index], images.mask[image_index],
                               texts.tokens[text_index], student_text_mask[text_index])
        targets = {name: F.one_hot(labels, 2).float() for name in ("text_query", "image_query")}
        if self.teacher is not None:
            with torch.no_grad():
                taught = self.teacher["reranker"](teacher_images.tokens[image_index], teacher_images.mask[image_index],
                                                  teacher_texts.tokens[text_index], teacher_texts.mask[text_index])
            if distill.target_weight:
                targets = {name: soft_targets(hard, getattr(taught, f"{name}_logits"), distill.target_weight)
                           for name, hard in targets.items()}
            if distill.feature_weight:
                terms["feature_distillation"] = distill.feature_weight * sum(
                    feature_distillation_loss(getattr(output, f"{name}_features"), getattr(taught, f"{name}_features"))
                    for name in ("text_query", "image_query"))
        weights = torch.where(labels == 1, self.config.positive_weight, 1.0).float()
        terms["text_queries"] = soft_cross_entropy(output.text_query_logits, targets["text_query"], weights)
        terms["image_queries"] = soft_cross_entropy(output.image_query_logits, targets["image_query"], weights)
        return {"loss": sum(terms.values()), "terms": {name: value.detach() for name, value in terms.items()}}

    def _pre_ranking_loss(self, local_images: TokenFeatures, local_texts: TokenFeatures, images: TokenFeatures,
                          texts: TokenFeatures, teacher_images: TokenFeatures | None,
                          teacher_texts: TokenFeatures | None, offset: int) -> torch.Tensor:
        """R2D2's global contrastive pre-ranking loss of this rank's rows against the gathered batch, with
        the teacher's softened targets when target-guided distillation is on."""
        size = local_images.embeds.shape[0]
        if self.queues is not None:
            return self._queued_pre_ranking_loss(local_images.embeds, local_texts.embeds, teacher_images.embeds,
                                                 teacher_texts.embeds, slice(offset, offset + size))
        hard = F.one_hot(torch.arange(offset, offset + size, device=images.embeds.device),
                         images.embeds.shape[0]).float()
        logits = self._global_logits(self.dual_encoder, local_images.embeds, local_texts.embeds,
                                     images.embeds, texts.embeds)
        targets = (hard, hard)
        weight = self.distillation.target_weight
        if teacher_images is not None and weight:
            with torch.no_grad():
                rows = slice(offset, offset + size)
                taught = self._global_logits(self.teacher["dual_encoder"], teacher_images.embeds[rows],
                                             teacher_texts.embeds[rows], teacher_images.embeds, teacher_texts.embeds)
            targets = tuple(soft_targets(hard, teacher_logits, weight) for teacher_logits in taught)
        return (soft_cross_entropy(logits[0], targets[0]) + soft_cross_entropy(logits[1], targets[1])) / 2

    def _queued_pre_ranking_loss(self, image_rows: torch.Tensor, text_rows: torch.Tensor,
                                 teacher_images: torch.Tensor, teacher_texts: torch.Tensor,
                                 rows: slice) -> torch.Tensor:
        """ALBEF's queued contrastive loss: this rank's student embeddings (``rows`` of the gathered batch)
        against the teacher's of the gathered batch followed by the queue, both directions averaged; in
        training, the teacher's gathered batch is enqueued afterwards."""
        queues, weight = self.queues, self.distillation.target_weight
        scale = self.dual_encoder.logit_scale.exp().float()
        with torch.no_grad():
            teacher_images = F.normalize(teacher_images.float(), dim=-1)
            teacher_texts = F.normalize(teacher_texts.float(), dim=-1)
            text_columns = torch.cat([teacher_texts, queues.texts])  # (N + K, D)
            image_columns = torch.cat([teacher_images, queues.images])
        logits = (scale * F.normalize(image_rows.float(), dim=-1) @ text_columns.T,
                  scale * F.normalize(text_rows.float(), dim=-1) @ image_columns.T)
        hard = F.one_hot(torch.arange(rows.start, rows.stop, device=text_columns.device), text_columns.shape[0]).float()
        targets = (hard, hard)
        if weight:
            with torch.no_grad():
                taught = (scale * teacher_images[rows] @ text_columns.T, scale * teacher_texts[rows] @ image_columns.T)
            targets = tuple(soft_targets(hard, teacher_logits, weight) for teacher_logits in taught)
        loss = (soft_cross_entropy(logits[0], targets[0]) + soft_cross_entropy(logits[1], targets[1])) / 2
        if self.training:
            queues.push(teacher_images, teacher_texts)
        return loss

    @staticmethod
    def _global_logits(model: nn.Module, image_rows, text_rows, all_images, all_texts):
        """(image -> all texts, text -> all images) logits at the model's ``logit_scale``."""
        scale = model.logit_scale.exp().float()
        image_rows, text_rows = F.normalize(image_rows.float(), dim=-1), F.normalize(text_rows.float(), dim=-1)
        all_images, all_texts = F.normalize(all_images.float(), dim=-1), F.normalize(all_texts.float(), dim=-1)
        return scale * image_rows @ all_texts.T, scale * text_rows @ all_images.T
