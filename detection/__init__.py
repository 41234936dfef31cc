"""Open-vocabulary detection with FG-CLIP in MMDetection 3.x (F-ViT on OV-COCO and OV-LVIS).

Importing this package registers its modules in mmdet's registries; configs load it with
``custom_imports = dict(imports=["detection"], allow_failed_imports=False)``.
Without mmcv's compiled ops or mmdet the import raises :class:`~detection.extra.DetectionExtraMissing`
(run ``make setup-detection``).
"""
from .extra import require_detection_extra

require_detection_extra()  # before the modules below import mmcv / mmdet
# ruff: noqa: E402
from .amp import CPUAmpOptimWrapper
from .backbone import FGCLIPViT, SimpleFeaturePyramid
from .checkpoint import WeightsOnlyCheckpointHook
from .class_embeddings import (
    CLIPSELF_TEMPLATES,
    FGCLIP_TEMPLATES,
    PROMPT_TEMPLATES,
    TEMPLATE_SETS,
    embed_class_names,
    load_class_embeddings,
    save_class_embeddings,
)
from .datasets import OV_COCO_BASE_CLASSES, OV_COCO_CLASSES, OV_COCO_NOVEL_CLASSES, OVCocoDataset
from .detector import FViT
from .losses import MaskedCrossEntropyLoss, masked_cross_entropy
from .lvis import OVLVISDataset, OVLVISMetric, lvis_box_ap, write_lvis_style
from .metrics import OVCocoAP50Metric, per_class_ap50
from .resume import ExactResumeHook
from .roi_head import FViTBBoxHead, FViTRoIHead, ensemble_scores
from .rpn_head import FViTRPNHead, NormedRPNHead

__all__ = [
    "CLIPSELF_TEMPLATES",
    "CPUAmpOptimWrapper",
    "ExactResumeHook",
    "FGCLIPViT",
    "FGCLIP_TEMPLATES",
    "FViT",
    "FViTBBoxHead",
    "FViTRPNHead",
    "FViTRoIHead",
    "MaskedCrossEntropyLoss",
    "NormedRPNHead",
    "OVCocoDataset",
    "OVCocoAP50Metric",
    "OVLVISDataset",
    "OVLVISMetric",
    "OV_COCO_BASE_CLASSES",
    "OV_COCO_CLASSES",
    "OV_COCO_NOVEL_CLASSES",
    "PROMPT_TEMPLATES",
    "SimpleFeaturePyramid",
    "TEMPLATE_SETS",
    "WeightsOnlyCheckpointHook",
    "embed_class_names",
    "ensemble_scores",
    "load_class_embeddings",
    "lvis_box_ap",
    "masked_cross_entropy",
    "per_class_ap50",
    "save_class_embeddings",
    "write_lvis_style",
]
