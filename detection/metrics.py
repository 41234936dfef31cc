"""OV-COCO box metric: AP at IoU 0.5 per class (pycocotools), averaged over novel / base / all classes."""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmdet.registry import METRICS

from .datasets import OV_COCO_NOVEL_CLASSES, category_ids_by_name, check_novel_classes


def load_coco(ann_file: str) -> COCO:
    """pycocotools' COCO of ``ann_file``, without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


def per_class_ap50(coco_gt: COCO, detections: list[dict], cat_ids: Sequence[int], img_ids: Sequence[int]) -> np.ndarray:
    """COCO AP at IoU 0.5 (area "all", 100 detections per image) of each category.

    Args:
        coco_gt: ground truth.
        detections: COCO result records ``{image_id, category_id, bbox: [x, y, w, h], score}``.
        cat_ids: categories to score, in output order.
        img_ids: images to evaluate on.
    Returns:
        (len(cat_ids),) AP50 in [0, 1]; NaN for a category without ground truth on ``img_ids``
        (COCO leaves such entries at -1 and excludes them from its means).
    """
    cat_ids, img_ids = list(cat_ids), list(img_ids)
    if not detections:
        # loadRes rejects an empty list; with no detections AP is 0 wherever there is ground truth.
        has_gt = [bool(coco_gt.getAnnIds(imgIds=img_ids, catIds=[cat_id], iscrowd=False)) for cat_id in cat_ids]
        return np.array([0.0 if gt else math.nan for gt in has_gt])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = cat_ids
        evaluator.params.imgIds = img_ids
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    iou_index = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    area_index = params.areaRngLbl.index("all")
    dets_index = params.maxDets.index(100)
    # precision: (iou thresholds, recall points, categories, areas, max dets); -1 = no ground truth.
    # COCOeval sorts params.catIds, so its category axis is in sorted-id order.
    precision = evaluator.eval["precision"][iou_index, :, :, area_index, dets_index]
    ap = np.full(len(cat_ids), math.nan)
    for k, cat_id in enumerate(cat_ids):
        column = precision[:, params.catIds.index(cat_id)]
        valid = column[column > -1]
        if valid.size:
            ap[k] = float(valid.mean())
    return ap



def prediction_arrays(sample: dict) -> dict:
    """One image's detections as CPU numpy arrays: ``img_id``, ``bboxes`` (N, 4), ``scores``, ``labels``."""
    pred = sample["pred_instances"]
    return {
        "img_id": int(sample["img_id"]),
        "bboxes": pred["bboxes"].detach().cpu().float().numpy(),
        "scores": pred["scores"].detach().cpu().float().numpy(),
        "labels": pred["labels"].detach().cpu().numpy(),
    }

@METRICS.register_module()
class OVCocoAP50Metric(BaseMetric):
    """AP50 of the novel classes, the base classes and all classes (in percent).

    Per-class AP50 comes from pycocotools' ``COCOeval`` precision at IoU 0.5; each reported
    value is the mean over the classes of its set that have ground truth ("all" weighs every
    class equally, e.g. (48 base + 17 novel) / 65 on OV-COCO). The classes and their order
    are the dataset's (``dataset_meta['classes']``); predicted label ``k`` is class ``k``.

    Args:
        ann_file: COCO json with the ground truth of the evaluated split.
        novel_classes: class names reported as novel; every other class is base.
        classwise: also log a table of per-class AP50.
        prefix: prefix of the metric names (default ``"ov_coco"``).
    """

    default_prefix = "ov_coco"

    def __init__(
        self,
        ann_file: str,
        novel_classes: Sequence[str] = OV_COCO_NOVEL_CLASSES,
        classwise: bool = False,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file
        self.novel_classes = tuple(novel_classes)
        self.classwise = classwise

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        self.results.extend(prediction_arrays(sample) for sample in data_samples)

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        if self.dataset_meta is None or "classes" not in self.dataset_meta:
            raise ValueError(f"{type(self).__name__} needs dataset_meta['classes'] (set by the Runner from the dataset)")
        classes = tuple(self.dataset_meta["classes"])
        novel = check_novel_classes(classes, self.novel_classes, f"{type(self).__name__} ({self.ann_file})")
        coco_gt = load_coco(self.ann_file)
        cat_ids = category_ids_by_name(coco_gt, classes, self.ann_file)
        detections = []
        for result in results:
            for (x1, y1, x2, y2), score, label in zip(result["bboxes"], result["scores"], result["labels"]):
                detections.append(
                    {
                        "image_id": result["img_id"],
                        "category_id": cat_ids[int(label)],
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        "score": float(score),
                    }
                )
        img_ids = sorted({result["img_id"] for result in results})
        ap = per_class_ap50(coco_gt, detections, cat_ids, img_ids) * 100
        is_novel = np.array([name in novel for name in classes])
        metrics = {}
        for name, mask in (("AP50_novel", is_novel), ("AP50_base", ~is_novel), ("AP50_all", np.ones_like(is_novel))):
            values = ap[mask & ~np.isnan(ap)]
            metrics[name] = float(values.mean()) if values.size else math.nan
        if self.classwise:
            rows = [f"{name:<20s} {'novel' if name in novel else 'base ':5s} {value:6.2f}" for name, value in zip(classes, ap)]
            MMLogger.get_current_instance().info("per-class AP50\n" + "\n".join(rows))
        return metrics
