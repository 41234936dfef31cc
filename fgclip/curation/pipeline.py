"""FineHARD curation of an image folder, one record per image appended to a JSONL file.

Per image (FG-CLIP Sec. 3.2): a VLM writes the long and the short caption; spaCy parses the
long caption into referring expressions; an open-vocabulary detector grounds them (best box
per expression, confidence above 0.4, NMS); each kept region gets a description (its
``long_expr``) and 10 attribute-swapped hard negatives of its ``short_expr`` from an LLM.
Every record is validated with :func:`fgclip.data.parse_record` before it is written.

The output is resumable: records are appended and flushed one line at a time, a rerun skips
the images already written, and a last line cut short by a crash is dropped before writing
resumes. Images that fail (a missing, truncated or non-image file: ``bad image``; a stage
error; an invalid record) raise with the image named, or with ``skip_errors`` are counted by
reason and left out. An image none of whose detections gives a valid region is left out and
counted (``no valid region``), and so are the detector's boxes without area (``inverted box``).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from ..data.finehard import FineHARDRecord, RecordError, Region, is_image_file, load_rgb, parse_record
from ..errors import DataError, ImageError, writing
from .grounding import select_regions, without_area

@dataclass
class CurationStats:
    """What a :func:`curate` run did."""

    written: int = 0
    already_done: int = 0
    regions: int = 0
    regions_with_negatives: int = 0
    skipped: Counter = field(default_factory=Counter)
    dropped_boxes: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = (f"wrote {self.written} records ({self.regions} regions, {self.regions_with_negatives} with "
                f"negatives), {self.already_done} already done, skipped {sum(self.skipped.values())}")
        if self.skipped:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common()) + ")"
        if self.dropped_boxes:
            text += f", dropped {sum(self.dropped_boxes.values())} detector boxes (" + ", ".join(
                f"{reason}: {n}" for reason, n in self.dropped_boxes.most_common()) + ")"
        return text


def find_images(image_root: str | os.PathLike) -> list[str]:
    """Image files under ``image_root`` (recursively), as sorted paths relative to it."""
    root = Path(image_root)
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if is_image_file(path))


def _written_paths(output: Path) -> set[str]:
    """``f_path`` of the complete records in ``output``; a trailing partial line is cut off."""
    if not output.is_file():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        complete = data[: data.rfind(b"\n") + 1]
        with open(output, "r+b") as handle:
            handle.truncate(len(complete))
        data = complete
    paths = set()
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                paths.add(json.loads(line)["f_path"])
            except (ValueError, KeyError, TypeError):
                raise DataError(output, "not a record this tool wrote (no JSON object with f_path); "
                                        "give a new --output", number) from None
    return paths


def curate_image(image, f_path: str, captioner, parser, grounder, negative_writer, *, threshold: float = 0.4,
                 iou_threshold: float = 0.5, max_regions: int | None = 8, describe_regions: bool = True,
                 dropped_boxes: Counter | None = None) -> FineHARDRecord:
    """One FineHARD record for an RGB PIL image (see the module docstring for the steps); confident
    detections without area are counted in ``dropped_boxes`` (``inverted box``)."""
    caption, short = captioner.caption(image)
    expressions = parser(caption)
    detections = grounder(image, [expression.text for expression in expressions])
    if dropped_boxes is not None:
        dropped_boxes["inverted box"] += sum(d.score > threshold and without_area(d) for d in detections)
    width, height = image.size
    regions = []
    for detection in select_regions(detections, threshold, iou_threshold, max_regions):
        expression = expressions[detection.query]
        x1, y1, x2, y2 = detection.box
        box = (max(x1, 0.0) / width, max(y1, 0.0) / height, min(x2, width) / width, min(y2, height) / height)
        long_expr = captioner.describe_region(image, detection.box, expression) if describe_regions else expression.phrase
        regions.append(Region(box=box, short_expr=expression.text, long_expr=long_expr,
                              negatives=negative_writer(expression), score=detection.score))
    return FineHARDRecord(f_path=f_path, caption=caption, short_caption=short, regions=tuple(regions))


def curate(
    images: Iterable[str],
    image_root: str | os.PathLike,
    output: str | os.PathLike,
    captioner,
    parser,
    grounder,
    negative_writer,
    *,
    skip_errors: bool = False,
    progress: bool = True,
    **options,
) -> CurationStats:
    """Curate ``images`` (paths relative to ``image_root``) into the JSONL file ``output``.

    ``options`` go to :func:`curate_image` (``threshold``, ``iou_threshold``, ``max_regions``,
    ``describe_regions``).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _written_paths(output)
    stats = CurationStats()
    images = list(images)
    with writing(output), open(output, "a", encoding="utf-8") as sink:
        for f_path in tqdm(images, desc="curating", disable=not progress, dynamic_ncols=True):
            if f_path in done:
                stats.already_done += 1
                continue
            where = f"{Path(image_root) / f_path}"
            try:
                image = load_rgb(Path(image_root) / f_path)
            except ImageError:
                if not skip_errors:
                    raise
                stats.skipped["bad image"] += 1
                continue
            try:
                record = curate_image(image, f_path, captioner, parser, grounder, negative_writer,
                                      dropped_boxes=stats.dropped_boxes, **options)
                line = json.dumps(record.to_dict(), ensure_ascii=False)
                parse_record(json.loads(line), f"{output} (record of {f_path})")
            except (OSError, ValueError, RecordError) as error:
                if not skip_errors:
                    raise DataError(f"{where}: {error}") from error
                stats.skipped[getattr(error, "reason", type(error).__name__)] += 1
                continue
            if not record.regions:
                stats.skipped["no valid region"] += 1
                continue
            sink.write(line + "\n")
            sink.flush()
            done.add(f_path)
            stats.written += 1
            stats.regions += len(record.regions)
            stats.regions_with_negatives += sum(region.negatives is not None for region in record.regions)
    return stats
