"""FineHARD records: schema, validation, and readers for JSON lists, JSONL files and
webdataset tar shards.

A FineHARD record describes one image (REFERENCE section 3)::

    {"f_path": "images/0001.jpg",                 # relative to the image root
     "caption": "<long caption>",
     "short_caption": "a photo of ...",
     "bbox_info": [{"bbox": [x1, y1, x2, y2(, score)],   # normalised to 0..1
                    "short_expr": "...", "long_expr": "...",
                    "flag_short_neg": 1,                   # 1 when negatives exist
                    "short_expr_negs": {"0": "...", ..., "9": "..."}}, ...],
     "is_cn": false}                                        # optional (FG-CLIP 2)

`parse_record` validates one decoded JSON object and returns a `FineHARDRecord`; a
malformed record raises `RecordError`, whose message names the file, the line (JSONL),
list index (JSON list) or shard sample, and the field::

    data/train.jsonl line 17: bbox_info[2].bbox: expected 4 or 5 numbers in [0, 1], got [0.1, 0.2]

`FineHARDReader` reads a JSONL file lazily (an index of line byte offsets is built once
and records are parsed on access, so DataLoader workers never hold the whole file) or a
JSON list (loaded whole: use JSONL for large files). `iter_shard_records` reads webdataset
tar shards holding (image, json) samples with the same schema, and `write_finehard_shards`
converts a JSON / JSONL file plus its image root into such shards.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError, ImageError, outside_root_reason
from ..image_io import image_size
from ..image_io import load_image as load_rgb  # the project's one image reader, under its old name here

NUM_HARD_NEGATIVES = 10
NEGATIVE_KEYS = tuple(str(i) for i in range(NUM_HARD_NEGATIVES))
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def is_image_file(name: str | os.PathLike) -> bool:
    """Whether a file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(name).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


class RecordError(DataError):
    """A record that does not follow the FineHARD schema.

    Attributes:
        location: where the record is, e.g. ``"data/train.jsonl line 17"``.
        field: the offending field, e.g. ``"bbox_info[2].bbox"`` (empty for a whole-record problem).
        problem: what is wrong with it.
        reason: a short category used to count skipped records, with list indices
            dropped, e.g. ``"bbox_info[].bbox: out of range"``.
    """

    def __init__(self, location: str, field: str = "", problem: str | None = None, kind: str = ""):
        if problem is None:  # built from a whole message (torch re-raising it from a DataLoader worker)
            location, problem, kind = "", location, "re-raised"
        self.location = location
        self.field = field
        self.problem = problem
        generic_field = re.sub(r"\[\d+\]", "[]", field)
        self.reason = f"{generic_field}: {kind}" if field else kind
        message = f"{location}: {field}: {problem}" if field else f"{location}: {problem}"
        super().__init__(message if location else problem)


@dataclass(frozen=True)
class Region:
    """One annotated region of a FineHARD image.

    Attributes:
        box: (x1, y1, x2, y2) normalised to 0..1.
        short_expr / long_expr: the short and long referring expressions.
        negatives: the 10 hard negatives of `short_expr` in key order "0".."9", or None
            when the record has none (``flag_short_neg == 0``).
        score: the grounding detector's confidence when the box carries one.
    """

    box: tuple[float, float, float, float]
    short_expr: str
    long_expr: str
    negatives: tuple[str, ...] | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        bbox = list(self.box) if self.score is None else [*self.box, self.score]
        out: dict[str, Any] = {"bbox": bbox, "short_expr": self.short_expr, "long_expr": self.long_expr}
        out["flag_short_neg"] = 0 if self.negatives is None else 1
        if self.negatives is not None:
            out["short_expr_negs"] = dict(zip(NEGATIVE_KEYS, self.negatives))
        return out


@dataclass(frozen=True)
class FineHARDRecord:
    """One FineHARD image with its captions and regions (see the module docstring)."""

    f_path: str
    caption: str
    short_caption: str
    regions: tuple[Region, ...] = ()
    is_cn: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record in FineHARD JSON form; `parse_record(record.to_dict())` gives it back."""
        out: dict[str, Any] = {
            "f_path": self.f_path,
            "caption": self.caption,
            "short_caption": self.short_caption,
            "bbox_info": [region.to_dict() for region in self.regions],
        }
        if self.is_cn is not None:
            out["is_cn"] = self.is_cn
        return out


def _short_repr(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if _is_json_value(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_json_value(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(obj: dict, key: str, prefix: str, location: str) -> Any:
    if key not in obj:
        raise RecordError(location, prefix + key, "missing", "missing")
    return obj[key]


def _check_string(value: Any, field_name: str, location: str) -> str:
    if not isinstance(value, str):
        raise RecordError(location, field_name, f"expected a string, got {_short_repr(value)}", "wrong type")
    if not value.strip():
        raise RecordError(location, field_name, "expected a non-empty string", "empty")
    return value


def _check_box(value: Any, field_name: str, location: str) -> tuple[tuple[float, float, float, float], float | None]:
    expected = "expected 4 or 5 numbers in [0, 1]"
    if not isinstance(value, (list, tuple)) or len(value) not in (4, 5) or not all(map(_is_number, value)):
        raise RecordError(location, field_name, f"{expected}, got {_short_repr(value)}", "wrong type")
    if not all(0.0 <= v <= 1.0 for v in value):
        raise RecordError(location, field_name, f"{expected}, got {_short_repr(value)}", "out of range")
    x1, y1, x2, y2 = (float(v) for v in value[:4])
    if not (x1 < x2 and y1 < y2):
        raise RecordError(
            location, field_name, f"expected x1 < x2 and y1 < y2, got {_short_repr(value)}", "empty box"
        )
    return (x1, y1, x2, y2), (float(value[4]) if len(value) == 5 else None)


def _check_negatives(value: Any, positive: str, field_name: str, location: str) -> tuple[str, ...]:
    if not isinstance(value, dict):
        raise RecordError(
            location, field_name, f"expected a dict with keys \"0\"..\"9\", got {_short_repr(value)}", "wrong type"
        )
    missing = [key for key in NEGATIVE_KEYS if key not in value]
    extra = sorted(str(key) for key in value if key not in NEGATIVE_KEYS)
    if missing or extra:
        problem = "expected keys \"0\"..\"9\""
        problem += f"; missing {missing}" if missing else ""
        problem += f"; unexpected {extra}" if extra else ""
        raise RecordError(location, field_name, problem, "bad keys")
    negatives = tuple(_check_string(value[key], f'{field_name}["{key}"]', location) for key in NEGATIVE_KEYS)
    for key, negative in zip(NEGATIVE_KEYS, negatives):
        if negative.strip() == positive.strip():
            raise RecordError(location, f'{field_name}["{key}"]', "identical to short_expr", "equals positive")
    return negatives


def _parse_region(obj: Any, prefix: str, location: str) -> Region:
    if not isinstance(obj, dict):
        raise RecordError(location, prefix.rstrip("."), f"expected an object, got {_short_repr(obj)}", "wrong type")
    box, score = _check_box(_require(obj, "bbox", prefix, location), prefix + "bbox", location)
    short_expr = _check_string(_require(obj, "short_expr", prefix, location), prefix + "short_expr", location)
    long_expr = _check_string(_require(obj, "long_expr", prefix, location), prefix + "long_expr", location)
    flag = _require(obj, "flag_short_neg", prefix, location)
    if isinstance(flag, bool) or flag not in (0, 1):
        raise RecordError(
            location, prefix + "flag_short_neg", f"expected 0 or 1, got {_short_repr(flag)}", "invalid value"
        )
    negatives = None
    if flag == 1:
        negs = _require(obj, "short_expr_negs", prefix, location)
        negatives = _check_negatives(negs, short_expr, prefix + "short_expr_negs", location)
    return Region(box=box, short_expr=short_expr, long_expr=long_expr, negatives=negatives, score=score)


def parse_record(obj: Any, location: str) -> FineHARDRecord:
    """Validate one decoded FineHARD JSON object.

    Args:
        obj: the decoded JSON value.
        location: where it comes from, used in error messages (e.g. "train.jsonl line 3").

    Raises:
        RecordError: naming `location` and the offending field.
    """
    if not isinstance(obj, dict):
        raise RecordError(location, "", f"expected a JSON object, got {_short_repr(obj)}", "not an object")
    f_path = _check_string(_require(obj, "f_path", "", location), "f_path", location)
    caption = _check_string(_require(obj, "caption", "", location), "caption", location)
    short_caption = _check_string(_require(obj, "short_caption", "", location), "short_caption", location)
    bbox_info = _require(obj, "bbox_info", "", location)
    if not isinstance(bbox_info, list):
        raise RecordError(location, "bbox_info", f"expected a list, got {_short_repr(bbox_info)}", "wrong type")
    regions = tuple(_parse_region(item, f"bbox_info[{i}].", location) for i, item in enumerate(bbox_info))
    is_cn = obj.get("is_cn")
    if is_cn is not None and not isinstance(is_cn, bool):
        raise RecordError(location, "is_cn", f"expected true or false, got {_short_repr(is_cn)}", "wrong type")
    return FineHARDRecord(f_path=f_path, caption=caption, short_caption=short_caption, regions=regions, is_cn=is_cn)


def parse_json_bytes(data: bytes | str, location: str) -> FineHARDRecord:
    """Decode one JSON document and validate it; invalid JSON raises `RecordError` too."""
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as error:
        raise RecordError(location, "", f"invalid JSON: {error.msg} (column {error.colno})", "invalid JSON") from None
    except UnicodeDecodeError as error:
        raise RecordError(location, "", f"invalid JSON: {error.reason}", "invalid JSON") from None
    return parse_record(obj, location)


@dataclass
class SkipStats:
    """Counts of records skipped under ``skip_bad_records``.

    Attributes:
        seen: records read (good and bad).
        skipped: records skipped.
        reasons: skipped records per `RecordError.reason`.
        examples: the first `max_examples` full error messages.
    """

    seen: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, error: RecordError) -> None:
        self.skipped += 1
        self.reasons[error.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    def summary(self) -> str:
        """One line, e.g. "skipped 2 of 100 records (bbox_info[].bbox: out of range: 2)"."""
        text = f"skipped {self.skipped} of {self.seen} records"
        if self.reasons:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.reasons.most_common()) + ")"
        return text


def _first_char(path: Path) -> bytes:
    with path.open("rb") as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped:
                return stripped[:1]
    return b""


class FineHARDReader(Sequence[FineHARDRecord]):
    """Random access to the records of a FineHARD JSON list or JSONL file.

    The format is detected from the first non-blank character (``[`` -> JSON list,
    ``{`` -> JSONL). Every record is validated once at construction.

    - JSONL: the file is scanned once to build an index of the byte offsets of the good
      lines (a numpy array, 8 bytes per record, shared copy-on-write by forked DataLoader
      workers); `__getitem__` seeks, reads and parses one line. Blank lines are ignored.
    - JSON list: loaded whole and kept as parsed records (memory grows with the file;
      prefer JSONL or shards for large data).

    With an ``image_root``, every record's image must exist under it and open as an image (its
    header is read) when the file is indexed: a missing or non-image file is a bad record, found
    before training starts (a file damaged past its header is found when it is read). An
    ``f_path`` that is absolute or leaves the root with ``..`` is refused unless ``allow_outside_root``.
    ``with_regions`` / ``with_negatives`` count the good records with boxes / hard negatives.

    Args:
        path: the .json / .jsonl file.
        skip_bad_records: skip malformed records and count them in `stats` instead of
            raising `RecordError`.
        image_root: directory the records' ``f_path`` are relative to (checked when given).
        allow_outside_root: accept absolute ``f_path`` and ones that leave ``image_root``.
    """

    def __init__(self, path: str | os.PathLike, skip_bad_records: bool = False,
                 image_root: str | os.PathLike | None = None, allow_outside_root: bool = False):
        self.path = str(path)
        self.skip_bad_records = skip_bad_records
        self.image_root = None if image_root is None else Path(image_root)
        self.allow_outside_root = allow_outside_root
        self.stats = SkipStats()
        self.with_regions = self.with_negatives = 0
        self._records: list[FineHARDRecord] | None = None
        self._offsets = np.zeros(0, dtype=np.int64)  # JSONL: byte offset of each good record
        self._positions = np.zeros(0, dtype=np.int64)  # line number (JSONL) or list index (JSON)
        self._handle: io.BufferedReader | None = None
        self._handle_pid = -1
        if not Path(self.path).is_file():
            raise DataError(self.path, "FineHARD file not found")
        first = _first_char(Path(self.path))
        if first == b"[":
            self.format = "json"
            self._load_list()
        elif first in (b"{", b""):
            self.format = "jsonl"
            self._index_lines()
        else:
            raise DataError(self.path, f"expected a JSON list or JSON lines, file starts with {first!r}")

    def _handle_error(self, error: RecordError) -> None:
        if not self.skip_bad_records:
            raise error
        self.stats.add(error)

    def _check(self, record: FineHARDRecord, location: str) -> FineHARDRecord:
        """Check a parsed record's image (when the reader has an image root) and count its regions."""
        if self.image_root is not None:
            reason = None if self.allow_outside_root else outside_root_reason(record.f_path)
            if reason:
                raise RecordError(location, "f_path", reason, "outside the image root")
            image = self.image_root / record.f_path
            if not image.is_file():
                raise RecordError(location, "f_path", f"image not found: {image}", "image not found")
            try:
                image_size(image)  # the header: a file that is not an image is a bad record before training
            except ImageError as error:
                raise RecordError(location, "f_path", str(error), "bad image") from None
        self.with_regions += bool(record.regions)
        self.with_negatives += any(region.negatives is not None for region in record.regions)
        return record

    def _index_lines(self) -> None:
        offsets, line_numbers = [], []
        offset = 0
        with open(self.path, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    self.stats.seen += 1
                    location = f"{self.path} line {line_number}"
                    try:
                        self._check(parse_json_bytes(line, location), location)
                    except RecordError as error:
                        self._handle_error(error)
                    else:
                        offsets.append(offset)
                        line_numbers.append(line_number)
                offset += len(line)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._positions = np.asarray(line_numbers, dtype=np.int64)

    def _load_list(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                items = json.load(handle)
        except json.JSONDecodeError as error:
            where = f"line {error.lineno} column {error.colno}"
            raise DataError(f"{self.path}:{error.lineno}: invalid JSON: {error.msg} ({where})") from None
        if not isinstance(items, list):
            raise DataError(self.path, "expected a JSON list of records")
        self._records, positions = [], []
        for index, item in enumerate(items):
            self.stats.seen += 1
            try:
                location = f"{self.path} item {index}"
                self._records.append(self._check(parse_record(item, location), location))
            except RecordError as error:
                self._handle_error(error)
            else:
                positions.append(index)
        self._positions = np.asarray(positions, dtype=np.int64)

    def location(self, index: int) -> str:
        """Where good record `index` is in the file: "train.jsonl line 18" or "train.json item 17"."""
        unit = "item" if self.format == "json" else "line"
        return f"{self.path} {unit} {int(self._positions[index])}"

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self._offsets)

    def __getitem__(self, index: int) -> FineHARDRecord:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record index {index} out of range for {len(self)} records")
        index %= len(self)
        if self._records is not None:
            return self._records[index]
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = open(self.path, "rb")
            self._handle_pid = os.getpid()
        self._handle.seek(int(self._offsets[index]))
        return parse_json_bytes(self._handle.readline(), self.location(index))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_handle_pid"] = None, -1
        return state

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._handle.close()


def _import_webdataset():
    try:
        import webdataset
    except ImportError as error:
        raise ImportError("FineHARD tar shards need the `webdataset` package: pip install 'fgclip[train]'") from error
    return webdataset


def write_finehard_shards(
    source: str | os.PathLike | FineHARDReader,
    image_root: str | os.PathLike,
    pattern: str,
    max_samples_per_shard: int = 10000,
) -> list[str]:
    """Convert a FineHARD JSON / JSONL file and its images into webdataset tar shards.

    Each sample holds the original image bytes (extension kept: ``jpg``, ``png``...) and
    the record as ``json``; the key is the record's position, zero-padded.

    Args:
        source: a FineHARD file or a reader over one.
        image_root: directory that the records' `f_path` are relative to.
        pattern: shard path with a printf field, e.g. ``"shards/finehard-%06d.tar"``.
        max_samples_per_shard: records per shard.

    Returns:
        The written shard paths, in order.
    """
    wds = _import_webdataset()
    reader = source if isinstance(source, FineHARDReader) else FineHARDReader(source, image_root=image_root)
    Path(pattern % 0).parent.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=max_samples_per_shard, post=written.append, verbose=0) as sink:
        for index in range(len(reader)):
            record = reader[index]
            image_path = Path(image_root) / record.f_path
            extension = image_path.suffix.lower().lstrip(".")
            if extension not in IMAGE_EXTENSIONS:
                raise DataError(f"{reader.location(index)}: f_path: unsupported image type {image_path.suffix!r}")
            if not image_path.is_file():
                raise DataError(f"{reader.location(index)}: f_path: image not found: {image_path}")
            sink.write(
                {
                    "__key__": f"{index:09d}",
                    extension: image_path.read_bytes(),
                    "json": json.dumps(record.to_dict(), ensure_ascii=False).encode("utf-8"),
                }
            )
    return written


def expand_shard_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand a shard spec (``"shards/finehard-{000000..000009}.tar"``, ``::``-separated) or a list."""
    wds = _import_webdataset()
    if isinstance(urls, (str, os.PathLike)):
        return wds.shardlists.expand_urls(str(urls))
    return [str(url) for url in urls]


def decode_shard_sample(sample: dict[str, Any]) -> tuple[Image.Image, FineHARDRecord]:
    """Turn one raw webdataset sample (``{"__key__", "__url__", "json", "<ext>"}``) into an RGB image and record."""
    location = f"{sample.get('__url__', '<shard>')} sample {sample.get('__key__')}"
    if "json" not in sample:
        raise RecordError(location, "json", "missing", "missing")
    record = parse_json_bytes(sample["json"], location)
    extensions = [ext for ext in IMAGE_EXTENSIONS if ext in sample]
    if not extensions:
        raise RecordError(location, "image", f"missing (expected one of {', '.join(IMAGE_EXTENSIONS)})", "missing")
    try:
        image = load_rgb(bytes(sample[extensions[0]]), "image")
    except ImageError as error:
        raise RecordError(location, extensions[0], f"cannot decode {error}", "bad image") from None
    return image, record


def iter_shard_records(
    urls: str | Sequence[str], skip_bad_records: bool = False, stats: SkipStats | None = None
) -> Iterator[tuple[str, Image.Image, FineHARDRecord, list[str]]]:
    """Stream (key, image, record, skipped_reasons) from FineHARD tar shards, in shard order.

    The shard list is split across distributed ranks and DataLoader workers
    (webdataset's ``split_by_node`` / ``split_by_worker``). `skipped_reasons` lists the
    `RecordError.reason` of the bad samples skipped since the previous yield -- for the last
    sample of the stream also those after it -- so that a count made in a DataLoader worker
    travels to the training process with the batch. A stream with no good sample at all
    warns with its count instead.

    Args:
        urls: shard paths or a brace pattern (see `expand_shard_urls`).
        skip_bad_records: skip malformed samples instead of raising `RecordError`.
        stats: optional `SkipStats` updated in this process.
    """
    wds = _import_webdataset()
    pipeline = wds.WebDataset(
        expand_shard_urls(urls),
        shardshuffle=False,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,
    )
    skipped: list[str] = []
    held = None  # one good sample is held back so that skips after the last one travel with it
    for sample in pipeline:
        if stats is not None:
            stats.seen += 1
        try:
            image, record = decode_shard_sample(sample)
        except RecordError as error:
            if not skip_bad_records:
                raise
            if stats is not None:
                stats.add(error)
            skipped.append(error.reason)
            continue
        if held is not None:
            yield held
        held = (sample["__key__"], image, record, skipped)
        skipped = []
    if held is not None:
        key, image, record, before = held
        yield key, image, record, before + skipped
    elif skipped:
        warnings.warn(
            f"all {len(skipped)} samples of this stream's shards were malformed and skipped "
            f"({', '.join(f'{reason}: {n}' for reason, n in Counter(skipped).most_common())})",
            stacklevel=2,
        )

