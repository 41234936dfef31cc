"""fgclip: fine-grained vision-language alignment (FG-CLIP) for PyTorch and transformers.

Names load on first use (``fgclip.FGCLIPModel`` imports torch, transformers and the model
module then), so ``import fgclip`` and the ``fgclip`` command start at once; training,
evaluation, curation, detection and the MLLM are separate modules imported only where used.
Loading any of these names registers the families (:mod:`fgclip.families`) with ``AutoConfig``, ``AutoModel``,
``AutoModelForZeroShotImageClassification`` (the zero-shot-image-classification pipeline) and
``AutoProcessor``.
"""
from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "FGCLIPConfig": "configuration_fgclip",
    "FGCLIP2Config": "configuration_fgclip2",
    "FGCLIP2TextConfig": "configuration_fgclip2",
    "FGCLIP2VisionConfig": "configuration_fgclip2",
    "FGCLIPImageOutput": "modeling_common",
    "FGCLIPModel": "modeling_fgclip",
    "FGCLIPOutput": "modeling_common",
    "interpolate_long_positions": "modeling_common",
    "FGCLIP2Model": "modeling_fgclip2",
    "FGCLIPProcessor": "processing_fgclip",
    "FGCLIP2Processor": "processing_fgclip2",
}

__all__ = sorted(_EXPORTS)


def register_auto_classes() -> None:
    """Register the families that have their own ``model_type`` (:mod:`fgclip.families`) with
    transformers' ``AutoConfig``, ``AutoModel``, ``AutoModelForZeroShotImageClassification`` and
    ``AutoProcessor`` (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

    from .families import FAMILIES

    for family in FAMILIES.values():
        if family.auto_classes:
            config = family.config_class
            AutoConfig.register(config.model_type, config, exist_ok=True)
            AutoModel.register(config, family.model_class, exist_ok=True)
            AutoModelForZeroShotImageClassification.register(config, family.model_class, exist_ok=True)
            AutoProcessor.register(config, family.processor_class, exist_ok=True)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, on_load=register_auto_classes)
