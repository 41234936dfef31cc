"""Small helpers shared by the FG-CLIP losses."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from .. import distributed

Method = TypeVar("Method", bound=Callable)


def outside_autocast(method: Method) -> Method:
    """Run a loss method with autocast disabled on its inputs' device.

    Together with :func:`normalize` (which upcasts half-precision features) the logits and
    cross-entropies are computed in float32 even inside a bf16/fp16 autocast region.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last dim; half-precision inputs are upcast to float32 first.

    Every loss normalises its inputs itself, so callers may pass raw or normalised
    features (normalising twice changes neither the values nor the gradients).
    All-zero rows (padding) stay zero.
    """
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    return F.normalize(features, dim=-1)


def scale_from_log(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) in float32 at least, never clamped (the official FG-CLIP and FG-CLIP 2 losses).

    CLIP's bound on the temperature is a clamp of the parameter after the optimizer step
    (:func:`fgclip.losses.clamp_logit_scales`): a clamp here would zero its gradient.
    """
    if logit_scale.dtype in (torch.float16, torch.bfloat16):
        logit_scale = logit_scale.float()
    return logit_scale.exp()


def connected_zero(*tensors: torch.Tensor | None) -> torch.Tensor:
    """A scalar 0 that keeps a grad_fn connected to ``tensors`` (for batches with nothing to score).

    Backward through it yields zero gradients, so every parameter that produced the
    inputs still receives a (zero) gradient, as DDP expects.
    """
    present = [tensor for tensor in tensors if tensor is not None]
    zero = present[0].new_zeros(())
    for tensor in present:
        zero = zero + tensor.sum() * 0.0
    return zero


def batch_count(local_count: int, device: torch.device, across_ranks: bool) -> tuple[int, int]:
    """(world_size, total count over ranks) for normalising a per-item loss sum.

    A rank's loss is ``local_sum * world_size / total``: the mean over ranks is then the
    mean over the joined batch, whatever the per-rank counts.
    """
    if not across_ranks or distributed.get_world_size() == 1:
        return 1, int(local_count)
    total = distributed.all_reduce_sum(torch.tensor(int(local_count), dtype=torch.long, device=device))
    return distributed.get_world_size(), int(total.item())


def check_features(name: str, tensor: torch.Tensor, ndim: int) -> None:
    """Raise a ValueError naming ``name`` unless ``tensor`` has ``ndim`` dims."""
    if tensor.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor, got shape {tuple(tensor.shape)}")


def check_candidates(
    region_embeds: torch.Tensor, candidate_embeds: torch.Tensor, candidate_mask: torch.Tensor | None
) -> torch.Tensor:
    """Validate (R, D) regions against (R, K, D) candidates (positive first); return the (R, K) mask."""
    check_features("region_embeds", region_embeds, 2)
    check_features("candidate_embeds", candidate_embeds, 3)
    num_regions, dim = region_embeds.shape
    if candidate_embeds.shape[0] != num_regions or candidate_embeds.shape[2] != dim:
        raise ValueError(
            f"candidate_embeds: expected shape ({num_regions}, K, {dim}) to match region_embeds "
            f"{tuple(region_embeds.shape)}, got {tuple(candidate_embeds.shape)}"
        )
    if candidate_embeds.shape[1] < 1:
        raise ValueError("candidate_embeds: needs at least the positive text (K >= 1) per region")
    if candidate_mask is None:
        return torch.ones(candidate_embeds.shape[:2], dtype=torch.bool, device=candidate_embeds.device)
    if candidate_mask.shape != candidate_embeds.shape[:2]:
        raise ValueError(
            f"candidate_mask: expected shape {tuple(candidate_embeds.shape[:2])}, "
            f"got {tuple(candidate_mask.shape)}"
        )
    candidate_mask = candidate_mask.to(dtype=torch.bool, device=candidate_embeds.device)
    if not bool(candidate_mask[:, 0].all()):
        missing = torch.nonzero(~candidate_mask[:, 0]).flatten().tolist()
        raise ValueError(f"candidate_mask: the positive (column 0) is masked out for regions {missing}")
    return candidate_mask


def check_paired(image_embeds: torch.Tensor, text_embeds, loss_name: str) -> None:
    """Images (B, D), B >= 1, and every caption set of the same shape (row i paired with image i)."""
    check_features("image_embeds", image_embeds, 2)
    if image_embeds.shape[0] == 0:
        raise ValueError(f"image_embeds: the {loss_name} loss needs at least one image")
    for index, text in enumerate(text_embeds):
        if text.shape != image_embeds.shape:
            raise ValueError(
                f"text_embeds[{index}]: expected shape {tuple(image_embeds.shape)} like image_embeds, "
                f"got {tuple(text.shape)}"
            )
