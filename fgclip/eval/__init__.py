"""Evaluation suite: FG-OVD, box classification, retrieval and zero-shot classification.

Each benchmark has a reader for its public file format and an ``evaluate_*`` function taking
a :class:`FeatureExtractor` (batched, one backbone pass per image, each distinct text once,
sharded over ``torch.distributed`` ranks). :func:`run_evaluation` / ``tools/eval_fgclip.py``
run everything found under a data root and write ``results.json`` and a markdown table.
Names load on first use, so importing one benchmark module does not import the others.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "BoxClassificationSet": "boxcls",
    "evaluate_boxcls": "boxcls",
    "load_coco_boxes": "boxcls",
    "load_lvis_boxes": "boxcls",
    "load_openimages_boxes": "boxcls",
    "DataError": "common",
    "ImageRequest": "common",
    "RegionRequests": "common",
    "FeatureExtractor": "features",
    "RegionFeatures": "features",
    "FGOVD_SUBSETS": "fgovd",
    "FGOVDBenchmark": "fgovd",
    "FGOVDItem": "fgovd",
    "evaluate_fgovd": "fgovd",
    "find_fgovd_files": "fgovd",
    "load_fgovd": "fgovd",
    "classification_ranks": "metrics",
    "multiple_choice_accuracy": "metrics",
    "retrieval_recall": "metrics",
    "target_ranks": "metrics",
    "topk_accuracy": "metrics",
    "RetrievalSet": "retrieval",
    "evaluate_retrieval": "retrieval",
    "load_caption_file": "retrieval",
    "load_dci": "retrieval",
    "load_sharegpt4v": "retrieval",
    "load_tsv": "retrieval",
    "DATASETS": "runner",
    "EvalOptions": "runner",
    "RunConfig": "runner",
    "markdown_table": "runner",
    "prepare": "runner",
    "run_evaluation": "runner",
    "IMAGENET_CLASSNAMES": "templates",
    "IMAGENET_TEMPLATES": "templates",
    "ClassificationSet": "zeroshot",
    "build_classifier": "zeroshot",
    "evaluate_zeroshot": "zeroshot",
    "load_image_folder": "zeroshot",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
