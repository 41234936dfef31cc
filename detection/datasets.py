"""OV-COCO: COCO detection restricted to 65 classes, 48 base (trained on) and 17 novel (held out).

:class:`OVCocoDataset` is mmdet's ``CocoDataset`` with two changes:

* labels follow the order of ``metainfo['classes']`` (mmdet's own follows the category order of
  the annotation file), and a class the annotation file does not define is an error;
* with ``base_only=True`` (training) the annotations of the novel classes are dropped, and
  ``filter_empty_gt`` then drops images left without annotations.

The base / novel split is a constructor argument, so a config can hold out any classes. The
original COCO files work (filtered here), and so do the OVR-CNN split files as distributed:
``instances_train2017_seen_2_65_cat.json`` (base annotations, 65 categories),
``instances_train2017_seen_2.json`` (base annotations and categories only: with ``base_only``
the novel classes may be absent from a training file) and ``instances_val2017_all_2.json``
(65 categories; their extra ``split`` / ``embedding`` fields are ignored).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from fgclip.errors import ConfigError, DataError
from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS

from .ov_coco_classes import classes as OV_COCO_CLASSES
from .ov_coco_classes import novel_classes as OV_COCO_NOVEL_CLASSES

OV_COCO_BASE_CLASSES = tuple(name for name in OV_COCO_CLASSES if name not in OV_COCO_NOVEL_CLASSES)


def check_novel_classes(classes: Sequence[str], novel_classes: Sequence[str], where: str) -> tuple[str, ...]:
    """Validate that ``novel_classes`` is a duplicate-free subset of ``classes``; return it as a tuple."""
    unknown = [name for name in novel_classes if name not in classes]
    if unknown:
        raise ConfigError(f"{where}: novel classes {unknown} are not among the classes {list(classes)}")
    if len(set(novel_classes)) != len(novel_classes):
        raise ConfigError(f"{where}: novel_classes has duplicates: {list(novel_classes)}")
    return tuple(novel_classes)


def category_ids_by_name(coco: COCO, class_names: Sequence[str], ann_file: str, may_miss: Sequence[str] = ()) -> list[int]:
    """COCO category ids of ``class_names``, in that order.

    Names in ``may_miss`` that the file does not define get ids -1, -2, ... (no annotation has them).

    Raises:
        DataError: naming ``ann_file`` and the class names it does not define.
    """
    ids_by_name = {category["name"]: category["id"] for category in coco.dataset["categories"]}
    absent = [name for name in class_names if name not in ids_by_name and name in may_miss]
    ids_by_name.update({name: -1 - k for k, name in enumerate(absent)})
    missing = [name for name in class_names if name not in ids_by_name]
    if missing:
        raise DataError(ann_file, f"field 'categories' has no category named {missing} (it defines {sorted(ids_by_name)})")
    return [ids_by_name[name] for name in class_names]


REQUIRED_FIELDS = {  # per record of a COCO-format file: what the COCO API and the datasets read
    "images": ("id", "width", "height"),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
}


def read_coco_json(path: str | Path) -> dict:
    """A COCO-format annotation file, checked to be a JSON object with lists 'images', 'categories'
    and (if present) 'annotations' whose records hold the fields the COCO API indexes; a
    :class:`DataError` names the file and the record (or the line of a JSON syntax error)."""
    if not Path(path).is_file():
        raise DataError(path, "annotation file not found (check ann_file and data_root in the config)")
    try:
        with open(path, encoding="utf-8") as handle:
            dataset = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg}, column {error.colno})", line=error.lineno) from error
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason} at byte {error.start}); expected COCO JSON") from error
    if not isinstance(dataset, dict):
        raise DataError(path, f"expected a JSON object with 'images' and 'categories', got {type(dataset).__name__}")
    for key in ("images", "categories", "annotations"):
        if key not in dataset and key != "annotations":
            raise DataError(path, f"no field '{key}' (not a COCO-format annotation file)")
        if not isinstance(dataset.get(key, []), list):
            raise DataError(path, f"field '{key}' must be a list, got {type(dataset[key]).__name__}")
        for index, record in enumerate(dataset.get(key, [])):
            missing = [name for name in REQUIRED_FIELDS[key] if not isinstance(record, dict) or name not in record]
            if missing:
                raise DataError(path, f"{key}[{index}]: no field {missing[0]!r}")
    return dataset


class NameOrderedCOCO(COCO):
    """mmdet's COCO API whose ``get_cat_ids(cat_names=...)`` keeps the order of the names
    (mmdet's follows the file) and rejects names the file does not define, except ``may_miss``;
    the file is read by :func:`read_coco_json`."""

    def __init__(self, annotation_file: str | None = None, may_miss: Sequence[str] = ()):
        self.annotation_file = annotation_file
        self.may_miss = tuple(may_miss)
        super().__init__(None)
        if annotation_file is not None:  # read here: errors name the file
            self.dataset = read_coco_json(annotation_file)
            self.createIndex()
            self.img_ann_map, self.cat_img_map = self.imgToAnns, self.catToImgs  # mmdet's aliases

    def get_cat_ids(self, cat_names=(), sup_names=(), cat_ids=()) -> list[int]:
        if not cat_names or sup_names or cat_ids:
            return super().get_cat_ids(list(cat_names), list(sup_names), list(cat_ids))
        return category_ids_by_name(self, cat_names, str(self.annotation_file), self.may_miss)


@DATASETS.register_module()
class OVCocoDataset(CocoDataset):
    """COCO-format dataset with a base / novel split of its classes.

    Labels follow the order of ``metainfo['classes']``.

    Args:
        novel_classes: names (a subset of ``metainfo['classes']``) held out from training.
        base_only: drop the annotations of novel classes (use for the training split).
        **kwargs: as for ``mmdet.datasets.CocoDataset`` (``ann_file``, ``data_prefix``,
            ``metainfo=dict(classes=...)``, ``filter_cfg``, ``pipeline``, ...).
    """

    METAINFO = {"classes": OV_COCO_CLASSES}
    COCOAPI = NameOrderedCOCO

    def __init__(self, *args, novel_classes: Sequence[str] = OV_COCO_NOVEL_CLASSES, base_only: bool = False, **kwargs):
        self.novel_classes = tuple(novel_classes)
        self.base_only = base_only
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> list[dict]:
        classes = self.metainfo["classes"]
        check_novel_classes(classes, self.novel_classes, f"{type(self).__name__} ({self.ann_file})")
        self._novel_labels = {classes.index(name) for name in self.novel_classes}
        # A base-only training file need not define the novel classes (OVR-CNN's seen_2 split).
        self.COCOAPI = partial(NameOrderedCOCO, may_miss=self.novel_classes if self.base_only else ())
        return super().load_data_list()

    def parse_data_info(self, raw_data_info: dict) -> dict:
        """mmdet's parsing; with ``base_only`` the novel-class instances are dropped. An image file
        that does not exist (on local disk) is a :class:`DataError` now, not in the middle of a run."""
        data_info = super().parse_data_info(raw_data_info)
        if self.backend_args is None and not os.path.isfile(data_info["img_path"]):
            raise DataError(self.ann_file, f"image {data_info['img_id']}: file {data_info['img_path']} not found "
                                           "(check data_root and data_prefix in the config)")
        if self.base_only:
            data_info["instances"] = [
                instance for instance in data_info["instances"] if instance["bbox_label"] not in self._novel_labels
            ]
        return data_info

    def filter_data(self) -> list[dict]:
        """Keep images with at least one (base, if ``base_only``) annotation and sides >= ``min_size``."""
        if self.test_mode or self.filter_cfg is None:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get("filter_empty_gt", False)
        min_size = self.filter_cfg.get("min_size", 0)
        return [
            info
            for info in self.data_list
            if (not filter_empty_gt or info["instances"]) and min(info["width"], info["height"]) >= min_size
        ]
