"""Torch datasets over FineHARD records: map-style (JSON / JSONL + image root) and
iterable (webdataset tar shards).

Both produce the same per-image sample (a dict; `fgclip.data.collate.FineHARDCollator`
batches it)::

    pixel_values         the processor's image keys for this image's row of its batch's
                         processor call: (3, S, S) for FG-CLIP; (N, 3 * p * p) patches with
                         ``pixel_attention_mask`` (N,) and ``spatial_shapes`` (2,) for FG-CLIP 2
                         (N: the patch budget of the batch)
    is_cn                bool, the record's `is_cn` (False when absent)
    long_text            str, the record's `caption`
    short_text           str, the record's `short_caption`
    boxes                (K, 4) float tensor, xyxy in input pixels (0..S), K <= max_boxes
    region_texts         K str, each region's short_expr or long_expr (chosen at random)
    hard_negative_texts  H lists of 1 + 10 str: [short_expr, negative "0", ..., negative "9"]
    hard_negative_regions H int, the region (0..K-1) each group belongs to
    skipped_records      list of `RecordError.reason` of bad shard samples skipped just
                         before this one, and for a stream's last sample also after it;
                         for the map-style dataset (whose bad records are counted up front
                         in `reader.stats`), the unreadable images it stepped over to give
                         this sample

The `processor` contract is the processor call of either family
(``FGCLIPProcessor`` / ``FGCLIP2Processor``): it is called as ``processor(images=images,
boxes=boxes)`` with the RGB PIL images of one batch and one (K, 4) float tensor of xyxy boxes
in *original image pixels* per image, and returns a mapping of the model's image keys (one row
per image) and ``boxes``, mapped to *input pixels* of the model input. One call per batch is
what makes FG-CLIP 2's size rule (``max_num_patches="auto"``) give every image of a batch the
budget of its largest, as the official training collator does.

Randomness (the region-caption choice) comes from a generator seeded by
(seed, epoch, sample index), so a run is reproducible whatever the worker layout, and
shards written by `write_finehard_shards` give the same samples as their source file;
call `set_epoch` before each epoch (before the DataLoader starts its workers).
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from ..errors import DataError, ImageError
from ..modeling_common import IMAGE_BATCH_KEYS
from .finehard import FineHARDReader, FineHARDRecord, SkipStats, expand_shard_urls, iter_shard_records, load_rgb

Processor = Callable[..., dict]
DEFAULT_MAX_BOXES = 4
SMALL_IMAGE_SIDE = 128  # the official FG-CLIP 2 training resizes images with a side under this to a square
IMAGE_KEYS = tuple(key for key in IMAGE_BATCH_KEYS if key not in ("boxes", "image_sizes"))


def load_sample(
    image: Image.Image,
    record: FineHARDRecord,
    max_boxes: int,
    rng: np.random.Generator,
    small_image_size: int | None = None,
) -> dict[str, Any]:
    """One training sample before image processing: ``image`` (the RGB image) and ``boxes`` in its
    pixels, with the texts of the module docstring.

    The first `max_boxes` regions of the record are kept (upstream's rule). Each kept
    region's caption is its short or long expression with probability 1/2; regions with
    negatives also give a hard-negative group whose positive is always `short_expr`.
    With `small_image_size`, an image with a side under 128 pixels is first resized to a
    `small_image_size` square (PIL bicubic, the default of ``Image.resize``), as the official
    FG-CLIP 2 training does (its ``box_image_size``); the normalised boxes follow the image.
    """
    if small_image_size and min(image.size) < SMALL_IMAGE_SIDE:
        image = image.resize((small_image_size, small_image_size), Image.Resampling.BICUBIC)
    regions = record.regions[:max_boxes]
    width, height = image.size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.tensor([region.box for region in regions], dtype=torch.float32).reshape(-1, 4) * scale
    use_long = rng.random(len(regions)) < 0.5
    hard_regions = [index for index, region in enumerate(regions) if region.negatives is not None]
    return {
        "image": image,
        "is_cn": bool(record.is_cn),
        "long_text": record.caption,
        "short_text": record.short_caption,
        "boxes": boxes,
        "region_texts": [r.long_expr if long else r.short_expr for r, long in zip(regions, use_long)],
        "hard_negative_texts": [[regions[i].short_expr, *regions[i].negatives] for i in hard_regions],
        "hard_negative_regions": hard_regions,
        "skipped_records": [],
    }


def encode_images(samples: list[dict[str, Any]], processor: Processor) -> list[dict[str, Any]]:
    """The samples of `load_sample` with their images through ONE processor call (so FG-CLIP 2's
    per-call patch budget is the batch's, as the official training collator): ``image`` replaced by
    the image keys of its row (batch dimension removed), ``boxes`` mapped to input pixels."""
    if not samples:
        return []
    batch = processor(images=[sample["image"] for sample in samples], boxes=[sample["boxes"] for sample in samples])
    encoded = []
    for row, sample in enumerate(samples):
        sample = {key: value for key, value in sample.items() if key != "image"}
        sample.update({key: value[row] for key, value in batch.items() if key in IMAGE_KEYS})
        sample["boxes"] = batch["boxes"][row].reshape(-1, 4).float()
        encoded.append(sample)
    return encoded


def build_sample(
    image: Image.Image,
    record: FineHARDRecord,
    processor: Processor,
    max_boxes: int,
    rng: np.random.Generator,
    small_image_size: int | None = None,
) -> dict[str, Any]:
    """One training sample with its image processed alone (see the module docstring)."""
    return encode_images([load_sample(image, record, max_boxes, rng, small_image_size)], processor)[0]


def _key_index(key: str) -> int:
    """The sample index of a shard key: the record position for keys written by
    `write_finehard_shards` (so shards and the source file give the same samples), else a hash."""
    return int(key) if key.isdigit() else zlib.crc32(key.encode("utf-8"))


def _check_small_image_size(size: int | None) -> int | None:
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"small_image_size must be an integer >= 1 or None, got {size!r}")
    return size


def _check_max_boxes(max_boxes: int) -> int:
    if not isinstance(max_boxes, int) or max_boxes < 0:
        raise ValueError(f"max_boxes must be an integer >= 0, got {max_boxes!r}")
    return max_boxes


class FineHARDDataset(Dataset):
    """Map-style FineHARD dataset: records from a JSON / JSONL file, images from a root.

    Args:
        source: a FineHARD file or a `FineHARDReader` over one.
        image_root: directory that the records' `f_path` are relative to.
        processor: an `FGCLIPProcessor` / `FGCLIP2Processor` (contract in the module docstring).
        max_boxes: regions kept per image (default 4, as upstream).
        seed: seed of the region-caption choice.
        skip_bad_records: when `source` is a path, skip and count malformed records and
            missing images while indexing (see `stats`) instead of raising; an image that
            cannot be decoded is then replaced by the next readable record's, and counted in the
            sample's ``skipped_records`` (``f_path: bad image``) each time it is met.
        allow_outside_root: accept ``f_path`` values that are absolute or leave ``image_root``.
        small_image_size: resize images with a side under 128 pixels to this square first
            (`load_sample`; the official FG-CLIP 2 training's ``box_image_size``).

    A DataLoader fetches a batch with ``__getitems__``: its images go through one processor call
    (`encode_images`), so FG-CLIP 2's patch budget is the batch's largest, as the official training
    collator does; ``dataset[i]`` processes image ``i`` alone.
    """

    def __init__(
        self,
        source: str | os.PathLike | FineHARDReader,
        image_root: str | os.PathLike,
        processor: Processor,
        max_boxes: int = DEFAULT_MAX_BOXES,
        seed: int = 0,
        skip_bad_records: bool = False,
        allow_outside_root: bool = False,
        small_image_size: int | None = None,
    ):
        self.reader = source if isinstance(source, FineHARDReader) else FineHARDReader(
            source, skip_bad_records, image_root=image_root, allow_outside_root=allow_outside_root)
        self.skip_bad_records = skip_bad_records
        self.image_root = Path(image_root)
        self.processor = processor
        self.max_boxes = _check_max_boxes(max_boxes)
        self.small_image_size = _check_small_image_size(small_image_size)
        self.seed = seed
        self.epoch = 0

    @property
    def stats(self) -> SkipStats:
        """Records seen and skipped while indexing the file."""
        return self.reader.stats

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def languages(self) -> list[bool]:
        """Each record's ``is_cn`` (False when absent), for language-grouped batches."""
        return [bool(record.is_cn) for record in self.reader]

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return encode_images([self._load(index) for index in indices], self.processor)

    def _load(self, index: int) -> dict[str, Any]:
        """Sample `index` before image processing (`load_sample`), stepping over unreadable images
        when `skip_bad_records` is set."""
        skipped = []
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            record = self.reader[position]
            try:
                image = load_rgb(self.image_root / record.f_path,
                                 f"{self.reader.location(position)}: f_path: {self.image_root / record.f_path}")
            except ImageError:
                if not self.skip_bad_records:
                    raise
                skipped.append("f_path: bad image")
                continue
            rng = np.random.default_rng((self.seed, self.epoch, index))
            sample = load_sample(image, record, self.max_boxes, rng, self.small_image_size)
            sample["skipped_records"] = skipped
            return sample
        raise DataError(self.reader.path, f"none of its {len(self)} records has a readable image")


class FineHARDShardDataset(IterableDataset):
    """Iterable FineHARD dataset over webdataset tar shards (image + json per sample).

    Shards are shuffled per epoch (seeded) when `shuffle_shards` is set, then split
    across distributed ranks and DataLoader workers. Malformed samples are skipped when
    `skip_bad_records` is set; their reasons travel with the next sample, or the last
    one at the end of a stream (``sample["skipped_records"]``), and the collated batch, so the trainer can count
    them whatever the number of workers.

    Args:
        urls: shard paths or a brace pattern, e.g. ``"shards/finehard-{000000..000009}.tar"``.
        processor / max_boxes / seed / small_image_size: as for `FineHARDDataset`.
        shuffle_shards: shuffle the shard order each epoch.
        skip_bad_records: skip malformed samples instead of raising `RecordError`.
        batch_size: the images of each `batch_size` consecutive samples of a worker's stream go
            through one processor call (`encode_images`); with the DataLoader's batch size, its
            batches, so FG-CLIP 2's patch budget is the batch's largest as in official training.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        processor: Processor,
        max_boxes: int = DEFAULT_MAX_BOXES,
        seed: int = 0,
        shuffle_shards: bool = False,
        skip_bad_records: bool = False,
        small_image_size: int | None = None,
        batch_size: int = 1,
    ):
        self.urls = expand_shard_urls(urls)
        if not self.urls:
            raise DataError(f"{urls}: no shards match this pattern")
        local = [url for url in self.urls if "://" not in url and not url.startswith("pipe:")]
        missing = [url for url in local if not Path(url).is_file()]
        if missing:
            raise DataError(missing[0], f"shard not found ({len(missing)} of {len(self.urls)} shards are missing)")
        self.processor = processor
        self.max_boxes = _check_max_boxes(max_boxes)
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.skip_bad_records = skip_bad_records
        self.small_image_size = _check_small_image_size(small_image_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.stats = SkipStats()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if len(self.urls) < world_size:
            raise DataError(f"{self.urls[0]}: {len(self.urls)} shards cannot be split across {world_size} ranks; "
                            "write at least one shard per rank")
        urls = list(self.urls)
        if self.shuffle_shards:
            np.random.default_rng((self.seed, self.epoch)).shuffle(urls)
        pending = []
        for key, image, record, skipped in iter_shard_records(urls, self.skip_bad_records, self.stats):
            rng = np.random.default_rng((self.seed, self.epoch, _key_index(key)))
            pending.append(load_sample(image, record, self.max_boxes, rng, self.small_image_size))
            pending[-1]["skipped_records"] = list(skipped)
            if len(pending) == self.batch_size:
                yield from encode_images(pending, self.processor)
                pending = []
        yield from encode_images(pending, self.processor)
