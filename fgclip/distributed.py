"""Cross-rank helpers used by the losses: the one place that talks to ``torch.distributed``.

Rank and world size are always read from the process group; when ``torch.distributed``
is not initialised every helper is a no-op (rank 0, world size 1, identity gather), so
the same loss code runs in a single process and under ``torchrun``.

Gradient convention of :func:`all_gather_with_grad`: the backward pass sums the
gradients that every rank computes for a gathered slice, so the gradient reaching a
rank's input is the gradient of the *sum* of all ranks' losses with respect to it.
Losses normalise their per-rank value so that the mean over ranks equals the loss of
the joined batch; DDP's gradient averaging (division by the world size) then gives
exactly the single-process gradient of the joined batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_padded_with_grad",
    "all_gather_with_grad",
    "all_reduce_sum",
    "gather_counts",
    "get_rank",
    "get_world_size",
    "is_initialized",
]


def is_initialized() -> bool:
    """True when a default ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate equally shaped tensors of all ranks along dim 0, differentiably.

    Backward: the full gathered gradient is summed over ranks (``all_reduce``, supported
    by every backend including gloo) and each rank keeps the slice of its own input.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        ctx.rank, ctx.length = dist.get_rank(), tensor.shape[0]
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, ctx.rank * ctx.length, ctx.length)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Gather ``tensor`` (N, ...) from all ranks into (world_size * N, ...), rank order.

    Every rank must pass the same shape. Gradients flow back to every rank's input.
    Returns ``tensor`` itself when not distributed.
    """
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def gather_counts(count: int, device: torch.device) -> list[int]:
    """The value ``count`` of every rank, in rank order (``[count]`` when not distributed)."""
    if get_world_size() == 1:
        return [int(count)]
    local = torch.tensor([int(count)], dtype=torch.long, device=device)
    pieces = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(pieces, local)
    return [int(piece.item()) for piece in pieces]


def all_gather_padded_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Gather tensors whose first dimension differs between ranks.

    Each rank's (N_r, ...) tensor is zero-padded to N_max = max_r N_r, gathered with
    gradients, and returned with a mask of the real rows.

    Returns:
        gathered: (world_size * N_max, ...); rank r's rows start at r * N_max.
        valid: (world_size * N_max,) bool, True on real (non-padding) rows.
        counts: N_r of every rank.
    """
    counts = gather_counts(tensor.shape[0], tensor.device)
    longest = max(counts)
    padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
    gathered = all_gather_with_grad(torch.cat([tensor, padding], dim=0))
    valid = torch.arange(longest, device=tensor.device).unsqueeze(0) < torch.tensor(
        counts, device=tensor.device
    ).unsqueeze(1)
    return gathered, valid.reshape(-1), counts


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, outside autograd (a detached copy when not distributed)."""
    total = tensor.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
