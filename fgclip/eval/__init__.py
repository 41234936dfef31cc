"""Evaluation suite: FG-OVD, box classification, retrieval and zero-shot classification.

Each benchmark has a reader for its public file format and an ``evaluate_*`` function taking
a :class:`FeatureExtractor` (batched, one backbone pass per image, each distinct text once,
sharded over ``torch.distributed`` ranks). :func:`run_evaluation` / ``tools/eval_fgclip.py``
run everything found under a data root and write ``results.json`` and a markdown table.
"""
from .boxcls import BoxClassificationSet, evaluate_boxcls, load_coco_boxes, load_lvis_boxes, load_openimages_boxes
from .common import DataError, ImageRequest, RegionRequests
from .features import FeatureExtractor, RegionFeatures
from .fgovd import FGOVD_SUBSETS, FGOVDBenchmark, FGOVDItem, evaluate_fgovd, find_fgovd_files, load_fgovd
from .metrics import classification_ranks, multiple_choice_accuracy, retrieval_recall, target_ranks, topk_accuracy
from .retrieval import RetrievalSet, evaluate_retrieval, load_caption_file, load_dci, load_sharegpt4v, load_tsv
from .runner import DATASETS, EvalOptions, RunConfig, markdown_table, prepare, run_evaluation
from .templates import IMAGENET_CLASSNAMES, IMAGENET_TEMPLATES
from .zeroshot import ClassificationSet, build_classifier, evaluate_zeroshot, load_image_folder

__all__ = [
    "BoxClassificationSet",
    "ClassificationSet",
    "DATASETS",
    "DataError",
    "EvalOptions",
    "FGOVDBenchmark",
    "FGOVDItem",
    "FGOVD_SUBSETS",
    "FeatureExtractor",
    "IMAGENET_CLASSNAMES",
    "IMAGENET_TEMPLATES",
    "ImageRequest",
    "RegionFeatures",
    "RegionRequests",
    "RetrievalSet",
    "RunConfig",
    "build_classifier",
    "classification_ranks",
    "evaluate_boxcls",
    "evaluate_fgovd",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "find_fgovd_files",
    "load_caption_file",
    "load_coco_boxes",
    "load_dci",
    "load_fgovd",
    "load_image_folder",
    "load_lvis_boxes",
    "load_openimages_boxes",
    "load_sharegpt4v",
    "load_tsv",
    "markdown_table",
    "multiple_choice_accuracy",
    "prepare",
    "retrieval_recall",
    "run_evaluation",
    "target_ranks",
    "topk_accuracy",
]
