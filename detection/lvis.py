"""OV-LVIS: LVIS v1 with the rare classes held out (trained on frequent + common), box AP_r / AP_c / AP_f / AP.

:class:`OVLVISDataset` reads LVIS json with pycocotools (no ``lvis`` package needed); the metric
:class:`OVLVISMetric` implements LVIS's federated box evaluation (:func:`lvis_box_ap`): per image
only the categories it has annotations of or lists in ``neg_category_ids`` are scored, unmatched
detections of its ``not_exhaustive_category_ids`` are ignored, at most 300 detections per image,
AP over IoU 0.50:0.95 and 101 recall points, and AP_r / AP_c / AP_f over the categories of each
``frequency``. :func:`write_lvis_style` turns a COCO file into that format (CPU smoke runs).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from pycocotools import mask as mask_utils

from fgclip.errors import ConfigError, DataError, write_atomically
from mmdet.registry import DATASETS, METRICS

from .datasets import OVCocoDataset, read_coco_json
from .metrics import prediction_arrays

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
FREQUENCIES = ("r", "c", "f")
MAX_DETS = 300


@DATASETS.register_module()
class OVLVISDataset(OVCocoDataset):
    """LVIS v1 json as an :class:`~detection.datasets.OVCocoDataset`: labels in the order of
    ``metainfo['classes']`` (``configs/_base_/datasets/ov_lvis.py`` lists the 1203 LVIS v1 names),
    ``base_only`` drops the annotations of ``novel_classes`` (the rare ones). An image without
    ``file_name`` is read from its ``coco_url``'s last two parts (``train2017/000000000139.jpg``)."""

    METAINFO = {"classes": ()}

    def __init__(self, *args, novel_classes: Sequence[str] = (), **kwargs):
        super().__init__(*args, novel_classes=novel_classes, **kwargs)

    def load_data_list(self) -> list[dict]:
        if not self.metainfo["classes"]:
            raise ConfigError(f"{type(self).__name__} ({self.ann_file}): set metainfo=dict(classes=...) "
                             "(configs/_base_/datasets/ov_lvis.py lists the LVIS v1 classes)")
        return super().load_data_list()

    def parse_data_info(self, raw_data_info: dict) -> dict:
        image = raw_data_info["raw_img_info"]
        if "file_name" not in image:
            if "coco_url" not in image:
                raise DataError(f"{self.ann_file}: image {image.get('id')} has neither 'file_name' nor 'coco_url'")
            image["file_name"] = "/".join(image["coco_url"].split("/")[-2:])
        return super().parse_data_info(raw_data_info)


def _box_ious(detections: list[dict], gts: list[dict]) -> np.ndarray:
    """(len(detections), len(gts)) IoU of [x, y, w, h] boxes (pycocotools, no crowd)."""
    if not detections or not gts:
        return np.zeros((len(detections), len(gts)))
    return np.asarray(mask_utils.iou([d["bbox"] for d in detections], [g["bbox"] for g in gts], [0] * len(gts)))


def _match(ious: np.ndarray, gt_ignore: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of score-sorted detections to gts sorted with ignored ones last.

    Returns (matched (D,) bool, matched-to-ignored-gt (D,) bool)."""
    num_dt, num_gt = ious.shape
    gt_taken = np.zeros(num_gt, dtype=bool)
    matched, on_ignored = np.zeros(num_dt, dtype=bool), np.zeros(num_dt, dtype=bool)
    for d in range(num_dt):
        best_iou, best = min(threshold, 1 - 1e-10), -1
        for g in range(num_gt):
            if gt_taken[g]:
                continue
            if best > -1 and not gt_ignore[best] and gt_ignore[g]:
                break
            if ious[d, g] < best_iou:
                continue
            best_iou, best = ious[d, g], g
        if best > -1:
            gt_taken[best] = True
            matched[d], on_ignored[d] = True, gt_ignore[best]
    return matched, on_ignored


def _precision_at_recalls(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> np.ndarray:
    """Interpolated precision at the 101 recall thresholds from cumulative tp / fp counts."""
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # max precision to the right
    index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    out = np.zeros(len(RECALL_THRESHOLDS))
    reachable = index < len(precision)
    out[reachable] = precision[index[reachable]]
    return out


def lvis_box_ap(dataset: Mapping, detections: Sequence[dict], img_ids: Sequence[int] | None = None) -> dict[str, float]:
    """LVIS federated box AP (fractions; -1 where a group has no category with ground truth).

    Args:
        dataset: LVIS json content (``images`` with ``neg_category_ids`` and
            ``not_exhaustive_category_ids``, ``annotations`` with ``area``, ``categories`` with
            ``frequency`` in r / c / f).
        detections: ``{image_id, category_id, bbox: [x, y, w, h], score}``.
        img_ids: images to evaluate (default: all of ``dataset``).
    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``APr``, ``APc``, ``APf``.
    """
    images = {image["id"]: image for image in dataset["images"]}
    img_ids = sorted(set(images) if img_ids is None else set(img_ids))
    wanted = set(img_ids)
    cat_ids = sorted(category["id"] for category in dataset["categories"])
    cat_index = {cat_id: k for k, cat_id in enumerate(cat_ids)}

    gts = defaultdict(list)
    for ann in dataset["annotations"]:
        if ann["image_id"] in wanted:
            gts[ann["image_id"], ann["category_id"]].append(ann)
    positive = defaultdict(set)
    for img_id, cat_id in gts:
        positive[img_id].add(cat_id)

    per_image = defaultdict(list)
    for det in detections:
        if det["image_id"] in wanted:
            per_image[det["image_id"]].append(det)
    dts = defaultdict(list)
    for img_id, dets in per_image.items():
        dets = sorted(dets, key=lambda d: d["score"], reverse=True)[:MAX_DETS]
        scored = positive[img_id] | set(images[img_id].get("neg_category_ids", []))
        for det in dets:
            if det["category_id"] in scored:
                dts[img_id, det["category_id"]].append(det)

    # Per (category, area): per image, the detections' scores, tp / ignore flags per IoU threshold.
    num_thr, num_area = len(IOU_THRESHOLDS), len(AREA_RANGES)
    collected = defaultdict(list)
    for img_id, cat_id in sorted(set(gts) | set(dts), key=lambda key: (cat_index[key[1]], key[0])):
        gt = gts.get((img_id, cat_id), [])
        dt = dts.get((img_id, cat_id), [])
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
        ious_all = _box_ious(dt, gt)
        not_exhaustive = cat_id in set(images[img_id].get("not_exhaustive_category_ids", []))
        dt_area = np.array([d["bbox"][2] * d["bbox"][3] for d in dt])
        for area_index, (low, high) in enumerate(AREA_RANGES.values()):
            gt_ignore = np.array([bool(g.get("ignore", 0)) or not low <= g["area"] <= high for g in gt], dtype=bool)
            order = np.argsort(gt_ignore, kind="mergesort")
            gt_ignore, ious = gt_ignore[order], ious_all[:, order]
            out_of_range = (dt_area < low) | (dt_area > high) if len(dt) else np.zeros(0, dtype=bool)
            matched = np.zeros((num_thr, len(dt)), dtype=bool)
            ignored = np.zeros((num_thr, len(dt)), dtype=bool)
            for t, threshold in enumerate(IOU_THRESHOLDS):
                matched[t], on_ignored = _match(ious, gt_ignore, threshold)
                ignored[t] = on_ignored | (~matched[t] & (out_of_range | not_exhaustive))
            collected[cat_index[cat_id], area_index].append(
                (np.array([d["score"] for d in dt]), matched, ignored, int((~gt_ignore).sum()))
            )

    precision = -np.ones((num_thr, len(RECALL_THRESHOLDS), len(cat_ids), num_area))
    for (k, area_index), parts in collected.items():
        num_gt = sum(part[3] for part in parts)
        if num_gt == 0:
            continue
        scores = np.concatenate([part[0] for part in parts])
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([part[1] for part in parts], axis=1)[:, order]
        ignored = np.concatenate([part[2] for part in parts], axis=1)[:, order]
        tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
        fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
        for t in range(num_thr):
            precision[t, :, k, area_index] = _precision_at_recalls(tp[t], fp[t], num_gt)

    frequency = {category["id"]: category["frequency"] for category in dataset["categories"]}
    groups = {f: [cat_index[c] for c in cat_ids if frequency[c] == f] for f in FREQUENCIES}

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else -1.0

    areas = list(AREA_RANGES)
    return {
        "AP": mean(precision[..., 0]),
        "AP50": mean(precision[0, :, :, 0]),
        "AP75": mean(precision[5, :, :, 0]),
        "APs": mean(precision[..., areas.index("small")]),
        "APm": mean(precision[..., areas.index("medium")]),
        "APl": mean(precision[..., areas.index("large")]),
        **{f"AP{f}": mean(precision[:, :, groups[f], 0]) for f in FREQUENCIES},
    }


@METRICS.register_module()
class OVLVISMetric(BaseMetric):
    """LVIS box AP (percent): ``AP``, ``APr`` (rare: the novel classes of OV-LVIS), ``APc``, ``APf``,
    plus ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``; NaN where a group has no ground truth.

    Predicted label ``k`` is ``dataset_meta['classes'][k]``, matched by name to the categories of
    ``ann_file`` (LVIS json).
    """

    default_prefix = "ov_lvis"

    def __init__(self, ann_file: str, collect_device: str = "cpu", prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        self.results.extend(prediction_arrays(sample) for sample in data_samples)

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        if self.dataset_meta is None or "classes" not in self.dataset_meta:
            raise ValueError(f"{type(self).__name__} needs dataset_meta['classes'] (set by the Runner from the dataset)")
        dataset = load_lvis_json(self.ann_file)
        ids_by_name = {category["name"]: category["id"] for category in dataset["categories"]}
        classes = list(self.dataset_meta["classes"])
        missing = [name for name in classes if name not in ids_by_name]
        if missing:
            raise DataError(f"{self.ann_file}: field 'categories' has no category named {missing[:10]}")
        cat_ids = [ids_by_name[name] for name in classes]
        detections = [
            {"image_id": result["img_id"], "category_id": cat_ids[int(label)],
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)}
            for result in results
            for (x1, y1, x2, y2), score, label in zip(result["bboxes"], result["scores"], result["labels"])
        ]
        summary = lvis_box_ap(dataset, detections, sorted({result["img_id"] for result in results}))
        metrics = {key: (100 * value if value >= 0 else math.nan) for key, value in summary.items()}
        MMLogger.get_current_instance().info(
            "LVIS box " + " ".join(f"{key} {value:.2f}" for key, value in metrics.items())
        )
        return metrics


def load_lvis_json(path: str | Path) -> dict:
    """An LVIS json, checked for the fields the federated evaluation needs (errors name the record)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "LVIS annotation file not found")
    dataset = read_coco_json(path)
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise DataError(path, f"no field '{key}'")
    for category in dataset["categories"]:
        if category.get("frequency") not in FREQUENCIES:
            raise DataError(f"{path}: category {category.get('id')} ({category.get('name')!r}): field 'frequency' "
                             f"must be one of {FREQUENCIES}, got {category.get('frequency')!r}")
    for image in dataset["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if not isinstance(image.get(key), list):
                raise DataError(path, f"image {image.get('id')}: field '{key}' must be a list")
    for ann in dataset["annotations"]:
        if "area" not in ann or "bbox" not in ann:
            raise DataError(f"{path}: annotation {ann.get('id')}: fields 'bbox' and 'area' are required")
    return dataset


def write_lvis_style(coco_file: str | Path, out_file: str | Path, frequencies: Mapping[str, str],
                     num_negatives: int = 2, not_exhaustive_every: int = 3) -> dict:
    """Write ``coco_file`` as an LVIS-format file: each category gets ``frequencies[name]``;
    each image lists as ``neg_category_ids`` the first ``num_negatives`` categories (by id) it
    has no annotation of, and every ``not_exhaustive_every``-th image marks its first annotated
    category as not exhaustively annotated. Returns the written content."""
    content = json.loads(Path(coco_file).read_text(encoding="utf-8"))
    names = [category["name"] for category in content["categories"]]
    unknown = sorted(set(names) - set(frequencies))
    if unknown or any(f not in FREQUENCIES for f in frequencies.values()):
        raise ValueError(f"frequencies must give r / c / f for every category of {coco_file}; missing {unknown}")
    present = defaultdict(set)
    for ann in content["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    cat_ids = sorted(category["id"] for category in content["categories"])
    for category in content["categories"]:
        category["frequency"] = frequencies[category["name"]]
    for index, image in enumerate(content["images"]):
        image["neg_category_ids"] = [c for c in cat_ids if c not in present[image["id"]]][:num_negatives]
        annotated = sorted(present[image["id"]])
        image["not_exhaustive_category_ids"] = annotated[:1] if annotated and index % not_exhaustive_every == 0 else []
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out_file, json.dumps(content))
    return content

