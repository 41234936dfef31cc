"""R2D2's two-way distillation: target-guided (soft targets from a momentum teacher, optionally over
ALBEF's queues of the teacher's recent embeddings) and feature-guided (teacher features of the full
input supervise the student's features of a masked input). The teacher is the exponential moving
average (EMA) of the modules being trained; see README.md ("Re-ranking (R2D2-style)") for what
supervises what.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Distillation:
    """The distillation options of a re-ranker training run (all off by default).

    Args:
        momentum: EMA momentum of the teacher (``teacher = m * teacher + (1 - m) * student``,
            once per forward pass, before the teacher is used); ``None``: no teacher, no distillation.
        target_weight: weight of the teacher's distribution in the soft targets
            (``(1 - w) * one_hot + w * softmax(teacher logits)``), for the ranking loss and, with
            ``pre_ranking``, the global contrastive loss.
        feature_weight: weight of the feature-guided term (0: off).
        feature_mask_ratio: fraction of each caption's tokens hidden from the student in the
            feature-guided term (the teacher reads the whole caption).
        queue_size: rows of ALBEF's queues of the teacher's recent image and text embeddings
            (:class:`FeatureQueues`), which widen the pre-ranking loss and its soft targets beyond the
            batch (0: off, the gathered batch only).
    """

    momentum: float | None = None
    target_weight: float = 0.0
    feature_weight: float = 0.0
    feature_mask_ratio: float = 0.0
    queue_size: int = 0

    def __post_init__(self):
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"distill_momentum: expected a value in [0, 1) or null, got {self.momentum}")
        for name in ("target_weight", "feature_mask_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"distill_{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if self.feature_weight < 0:
            raise ValueError(f"distill_feature_weight: expected a value >= 0, got {self.feature_weight}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ValueError(f"distill_queue_size: expected an integer >= 0, got {self.queue_size!r}")
        if self.momentum is None and (self.target_weight or self.feature_weight):
            raise ValueError("distill_target_weight / distill_feature_weight need a teacher: set distill_momentum")
        if self.momentum is None and self.queue_size:
            raise ValueError("distill_queue_size needs a teacher (the queues hold its embeddings): "
                             "set distill_momentum")
        if self.feature_weight and not self.feature_mask_ratio:
            raise ValueError("distill_feature_weight: set distill_feature_mask_ratio > 0 (the student's masked input)")

    @property
    def enabled(self) -> bool:
        return self.momentum is not None

    @classmethod
    def from_config(cls, config) -> "Distillation":
        """The ``distill_*`` fields of a :class:`~fgclip.rerank.CrossEncoderRerankerConfig`."""
        return cls(momentum=config.distill_momentum, target_weight=config.distill_target_weight,
                   feature_weight=config.distill_feature_weight, feature_mask_ratio=config.distill_feature_mask_ratio,
                   queue_size=config.distill_queue_size)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in eval mode (its parameters never reach an optimizer)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter (buffers copied)."""
    for target, source in zip(teacher.parameters(), student.parameters(), strict=True):
        target.mul_(momentum).add_(source.detach().to(target.dtype), alpha=1.0 - momentum)
    for target, source in zip(teacher.buffers(), student.buffers(), strict=True):
        target.copy_(source)


class FeatureQueues(nn.Module):
    """ALBEF's queues of a momentum teacher's recent embeddings, one per modality: ``size`` L2-normalised
    rows each (buffers, so checkpoints carry them), first random unit vectors drawn from ``seed``, then a
    ring buffer with one write position (``pointer``) that every step overwrites with the teacher's
    gathered batch, the oldest rows first."""

    def __init__(self, size: int, width: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.images = nn.Buffer(F.normalize(torch.randn(size, width, generator=generator), dim=1))
        self.texts = nn.Buffer(F.normalize(torch.randn(size, width, generator=generator), dim=1))
        self.pointer = nn.Buffer(torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        """Write (N, D) normalised image and text embeddings (the whole gathered batch, the same on every
        rank) at ``pointer`` and advance it by N, modulo the size, which N must divide (as in ALBEF)."""
        count, size = images.shape[0], self.images.shape[0]
        if size % count:
            raise ValueError(f"distill_queue_size: {size} is not a multiple of the global batch {count} "
                             "(per-device batch x ranks); the queues take whole batches")
        start = int(self.pointer)
        self.images[start : start + count] = images.to(self.images.dtype)
        self.texts[start : start + count] = texts.to(self.texts.dtype)
        self.pointer.fill_((start + count) % size)


def soft_targets(hard: torch.Tensor, teacher_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * hard + weight * softmax(teacher_logits)`` over the last dimension.

    Args:
        hard: (..., C) target distributions (one-hot rows, or rows spread over several positives).
        teacher_logits: (..., C) the teacher's logits of the same rows.
    """
    return (1.0 - weight) * hard + weight * F.softmax(teacher_logits.detach().float(), dim=-1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``-sum(targets * log_softmax(logits))`` (cross entropy when targets are one-hot);
    with per-row ``weights``, their weighted mean ``sum(w * ce) / sum(w)`` (``F.cross_entropy``'s class
    weights when the targets are one-hot and ``w`` is the weight of each row's class)."""
    losses = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    if weights is None:
        return losses.mean()
    return (weights * losses).sum() / weights.sum()


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the student's features and the (detached) teacher's."""
    return F.mse_loss(student.float(), teacher.detach().float())


def mask_tokens(mask: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``mask`` (N, L) with ``round(ratio * real)`` of each row's real tokens, drawn uniformly, set to 0;
    at least one real token of every row stays."""
    real = mask.bool().cpu()
    noise = torch.rand(real.shape, generator=generator).masked_fill(~real, 2.0)  # padding sorts last
    counts = real.sum(dim=1)
    hidden = torch.minimum((counts.double() * ratio).round().long(), (counts - 1).clamp(min=0))
    rank = noise.argsort(dim=1).argsort(dim=1)
    drop = rank < hidden.unsqueeze(1)
    return (real & ~drop).to(mask.dtype).to(mask.device)
