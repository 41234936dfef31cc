"""Open-vocabulary detection with FG-CLIP in MMDetection 3.x (F-ViT on OV-COCO).

Importing this package registers its modules in mmdet's registries; configs load it with
``custom_imports = dict(imports=["detection"], allow_failed_imports=False)``.
"""
from .backbone import FGCLIPViT, SimpleFeaturePyramid
from .checkpoint import WeightsOnlyCheckpointHook
from .class_embeddings import PROMPT_TEMPLATES, embed_class_names, load_class_embeddings, save_class_embeddings
from .datasets import OV_COCO_BASE_CLASSES, OV_COCO_CLASSES, OV_COCO_NOVEL_CLASSES, OVCocoDataset
from .detector import FViT
from .metrics import OVCocoAP50Metric, per_class_ap50
from .roi_head import FViTBBoxHead, FViTRoIHead, ensemble_scores

__all__ = [
    "FGCLIPViT",
    "FViT",
    "FViTBBoxHead",
    "FViTRoIHead",
    "OVCocoDataset",
    "OVCocoAP50Metric",
    "OV_COCO_BASE_CLASSES",
    "OV_COCO_CLASSES",
    "OV_COCO_NOVEL_CLASSES",
    "PROMPT_TEMPLATES",
    "SimpleFeaturePyramid",
    "WeightsOnlyCheckpointHook",
    "embed_class_names",
    "ensemble_scores",
    "load_class_embeddings",
    "per_class_ap50",
    "save_class_embeddings",
]
