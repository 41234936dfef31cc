"""Shared pieces of the benchmark readers: errors, image requests, boxes and paths.

Every reader turns its annotation file into :class:`ImageRequest` objects (one per image,
holding all boxes of that image) so the feature extractor runs the backbone once per image.
A malformed record raises :class:`DataError` (:mod:`fgclip.errors`) naming the file, the record and
the field::

    fgovd/hard.jsonl line 12: bbox [600.0, 10.0, 80.0, 20.0] (x, y, w, h) lies outside the 640x480 image
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from ..errors import DataError, outside_root_reason

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (annotation rounding); it is clipped


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file, turning a missing file or a syntax error into a :class:`DataError`."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` for each non-blank line of a JSONL file; ``where`` is ``"file line N"``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def iter_tsv(path: str | os.PathLike, columns: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(where, fields)`` for each non-blank line of a tab-separated file with ``columns``
    (non-empty, stripped); a malformed line is a :class:`DataError` naming file and line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    layout = "<TAB>".join(columns)
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = [field.strip() for field in line.split("\t")]
            if len(fields) != len(columns) or not all(fields):
                raise DataError(f"{path} line {line_number}: expected '{layout}', got {line[:80]!r}")
            yield f"{path} line {line_number}", fields


def require(record: dict, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``record[key]``, or a :class:`DataError` naming ``where`` when it is missing or of the wrong type."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{where}: missing key {key!r}")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: {key!r} must be {names}, got {type(value).__name__}")
    return value


def require_text(record: dict, key: str, where: str) -> str:
    """A non-empty string field."""
    value = require(record, key, where, str)
    if not value.strip():
        raise DataError(f"{where}: {key!r} is empty")
    return value


def text_list(value: Any, key: str, where: str) -> list[str]:
    """A string or a non-empty list of non-empty strings."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise DataError(f"{where}: {key!r} must be a string or a non-empty list of strings")
    for index, text in enumerate(values):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: {key}[{index}] must be a non-empty string, got {text!r}")
    return values


def image_size_of(record: dict, where: str) -> tuple[int, int] | None:
    """``(width, height)`` from a record's ``width`` / ``height`` keys, ``None`` when absent."""
    if "width" not in record and "height" not in record:
        return None
    width, height = require(record, "width", where), require(record, "height", where)
    for key, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise DataError(f"{where}: {key!r} must be a positive number, got {value!r}")
    return int(width), int(height)


def xywh_to_xyxy(
    bbox: Any, where: str, size: tuple[int, int] | None = None, key: str = "bbox"
) -> tuple[float, float, float, float]:
    """Validate an ``(x, y, w, h)`` pixel box and return it as ``(x1, y1, x2, y2)``.

    With ``size`` (width, height) the box must lie inside the image up to
    :data:`BOX_TOLERANCE` pixels and is clipped to it.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(f"{where}: {key!r} must be 4 numbers (x, y, w, h), got {bbox!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise DataError(f"{where}: {key!r} must hold finite numbers, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: {key} {list(bbox)} (x, y, w, h) has zero or negative size")
    return check_inside((x, y, x + w, y + h), where, size, f"{key} {list(bbox)} (x, y, w, h)")


def check_inside(
    box: tuple[float, float, float, float], where: str, size: tuple[float, float] | None, what: str
) -> tuple[float, float, float, float]:
    """Check an xyxy box against an image of ``size`` (width, height); clip within the tolerance."""
    if size is None:
        return box
    width, height = size
    x1, y1, x2, y2 = box
    tol = BOX_TOLERANCE
    outside = x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol
    if outside or x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        raise DataError(f"{where}: {what} lies outside the {width:g}x{height:g} image")
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))


def coco_image_path(image: dict, where: str) -> str:
    """Relative path of a COCO / LVIS image entry: ``split/name`` from ``coco_url``, else ``file_name``."""
    url = image.get("coco_url")
    if isinstance(url, str) and url:
        parts = urlparse(url).path.strip("/").split("/")
        return "/".join(parts[-2:])
    return require_text(image, "file_name", where)


def resolve_image(root: str | os.PathLike, relative: str, where: str, basename_fallback: bool = False,
                  allow_outside_root: bool = False) -> str:
    """``root/relative`` if it exists (optionally ``root/basename(relative)``), else a :class:`DataError`;
    a path that is absolute or leaves ``root`` is refused unless ``allow_outside_root``
    (``EvalOptions.allow_outside_root``, the ``--allow-outside-root`` option)."""
    reason = None if allow_outside_root else outside_root_reason(relative)
    if reason:
        raise DataError(f"{where}: image {reason}")
    path = Path(root, relative)
    if path.is_file():
        return str(path)
    if basename_fallback:
        flat = Path(root, Path(relative).name)
        if flat.is_file():
            return str(flat)
        raise DataError(f"{where}: image file not found: {path} (nor {flat})")
    raise DataError(f"{where}: image file not found: {path}")


@dataclass
class ImageRequest:
    """One image to encode and the boxes whose region features are wanted.

    Args:
        path: image file.
        boxes: (K, 4) xyxy boxes in pixels of the original image, or as fractions of its
            width and height when ``normalized`` (Open Images); empty for global features only.
        size: (width, height) the annotation declares; the loaded image must match it.
        source: where the request came from, for error messages.
    """

    path: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    size: tuple[int, int] | None = None
    normalized: bool = False
    source: str = ""

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


class RegionRequests:
    """Collects boxes per image so each image is encoded once, whatever task or subset asks for it.

    :meth:`add` returns a handle ``(image index, box index)``; identical boxes of the same image
    share one handle. :meth:`requests` gives the :class:`ImageRequest` list in first-seen order.
    """

    def __init__(self):
        self._paths: dict[str, int] = {}
        self._boxes: list[dict[tuple[float, ...], int]] = []
        self._sizes: list[tuple[int, int] | None] = []
        self._sources: list[str] = []
        self._normalized: list[bool] = []

    def add(
        self,
        path: str,
        box: Sequence[float],
        where: str,
        size: tuple[int, int] | None = None,
        normalized: bool = False,
    ) -> tuple[int, int]:
        index = self._paths.get(path)
        if index is None:
            index = self._paths[path] = len(self._boxes)
            self._boxes.append({})
            self._sizes.append(size)
            self._sources.append(where)
            self._normalized.append(normalized)
        elif size is not None and self._sizes[index] not in (None, size):
            width, height = self._sizes[index]
            raise DataError(
                f"{where}: image {path} is declared {size[0]}x{size[1]} here but "
                f"{width}x{height} at {self._sources[index]}"
            )
        elif normalized != self._normalized[index]:
            raise DataError(f"{where}: image {path} mixes pixel and normalised boxes")
        if size is not None:
            self._sizes[index] = size
        boxes = self._boxes[index]
        key = tuple(float(v) for v in box)
        box_index = boxes.setdefault(key, len(boxes))
        return index, box_index

    def __len__(self) -> int:
        return len(self._boxes)

    def requests(self) -> list[ImageRequest]:
        out = []
        for path, index in self._paths.items():
            boxes = np.array(list(self._boxes[index]), dtype=np.float64).reshape(-1, 4)
            out.append(ImageRequest(path, boxes, self._sizes[index], self._normalized[index], self._sources[index]))
        return out
