"""Grounding referring expressions with an open-vocabulary detector, then NMS and a confidence
threshold (FG-CLIP keeps boxes above 0.4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms


@dataclass(frozen=True)
class Detection:
    """A box found for one query: ``box`` xyxy in pixels, ``query`` the index of the expression."""

    box: tuple[float, float, float, float]
    score: float
    query: int


def without_area(detection: Detection) -> bool:
    """A box whose far corner is not beyond its near one (an inverted or flat detection)."""
    x1, y1, x2, y2 = detection.box
    return x2 <= x1 or y2 <= y1


def select_regions(
    detections: list[Detection], threshold: float = 0.4, iou_threshold: float = 0.5, max_regions: int | None = None
) -> list[Detection]:
    """Best box of each query above ``threshold``, then NMS across queries, by descending score.

    One region per expression; a lower-scoring box overlapping a kept one by more than
    ``iou_threshold`` is dropped (two expressions naming the same object keep one region).
    """
    best: dict[int, Detection] = {}
    for detection in detections:
        if detection.score <= threshold or without_area(detection):
            continue
        if detection.query not in best or detection.score > best[detection.query].score:
            best[detection.query] = detection
    candidates = list(best.values())
    if not candidates:
        return []
    boxes = torch.tensor([c.box for c in candidates], dtype=torch.float32)
    scores = torch.tensor([c.score for c in candidates], dtype=torch.float32)
    kept = [candidates[i] for i in nms(boxes, scores, iou_threshold).tolist()]
    return kept if max_regions is None else kept[:max_regions]


class PipelineGrounder:
    """Open-vocabulary detection through transformers' ``zero-shot-object-detection`` pipeline
    (OWLv2, OWL-ViT, Grounding DINO...): image + expressions -> :class:`Detection` list.

    Args:
        model: a hub id or directory, or a ready pipeline object.
    """

    def __init__(self, model="google/owlv2-base-patch16-ensemble", device=None):
        if isinstance(model, str):
            from transformers import pipeline

            model = pipeline("zero-shot-object-detection", model=model, device=device)
        self.detector = model

    def __call__(self, image, queries: list[str]) -> list[Detection]:
        if not queries:
            return []
        index = {query: position for position, query in enumerate(queries)}
        found = self.detector(image, candidate_labels=list(queries), threshold=0.0)
        return [
            Detection((item["box"]["xmin"], item["box"]["ymin"], item["box"]["xmax"], item["box"]["ymax"]),
                      float(item["score"]), index[item["label"]])
            for item in found
        ]
