"""The learnable temperatures outside the loss: the stage-2 start and CLIP's optional clamp.

The losses use ``exp(logit_scale)`` unclamped. The official FG-CLIP stage-2 launch starts the
regional and hard-negative temperatures from the global one
(:func:`copy_logit_scale_to_region_scales`); CLIP and open_clip bound the temperature by
clamping the parameter after every optimizer step (:func:`clamp_logit_scales`), which
FG-CLIP does not do.
"""
from __future__ import annotations

import math

import torch
from torch import nn

REGION_SCALES = ("logit_scale_finegraind", "logit_scale_hardneg")


@torch.no_grad()
def copy_logit_scale_to_region_scales(model: nn.Module) -> None:
    """Set ``logit_scale_finegraind`` and ``logit_scale_hardneg`` to ``logit_scale`` in place.

    As the official stage-2 launch does; call it once on the freshly loaded model, before
    training starts (a resumed run then loads its trained values from the checkpoint).
    """
    for name in ("logit_scale", *REGION_SCALES):
        if not isinstance(getattr(model, name, None), nn.Parameter):
            raise ValueError(f"{type(model).__name__} has no parameter {name!r} (an FG-CLIP model has all three)")
    for name in REGION_SCALES:
        parameter = getattr(model, name)
        parameter.copy_(model.logit_scale.reshape(parameter.shape))


@torch.no_grad()
def clamp_logit_scales(module: nn.Module, max_scale: float = 100.0) -> None:
    """Clamp every ``logit_scale*`` parameter of ``module`` to ``[0, ln(max_scale)]`` in place.

    CLIP's bound on the temperatures, applied after each optimizer step as open_clip does
    (``module`` may be a model or a wrapper holding one).
    """
    if max_scale <= 1.0:
        raise ValueError(f"max_scale: expected a value above 1 (exp of a positive log scale), got {max_scale}")
    scales = [parameter for name, parameter in module.named_parameters()
              if name.rsplit(".", 1)[-1].startswith("logit_scale")]
    if not scales:
        raise ValueError(f"{type(module).__name__} has no logit_scale parameter to clamp")
    for parameter in scales:
        parameter.clamp_(0.0, math.log(max_scale))
