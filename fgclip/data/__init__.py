"""FG-CLIP training data: FineHARD records and readers, datasets, batching, and the
synthetic shapes scenes (`fgclip.data.shapes`)."""
from .collate import FineHARDCollator, deduplicate
from .datasets import FineHARDDataset, FineHARDShardDataset, build_sample
from .sampler import LanguageGroupedBatchSampler
from .finehard import (
    FineHARDReader,
    FineHARDRecord,
    RecordError,
    Region,
    SkipStats,
    decode_shard_sample,
    iter_shard_records,
    load_rgb,
    parse_record,
    write_finehard_shards,
)

__all__ = [
    "FineHARDCollator",
    "FineHARDDataset",
    "FineHARDReader",
    "FineHARDRecord",
    "FineHARDShardDataset",
    "LanguageGroupedBatchSampler",
    "RecordError",
    "Region",
    "SkipStats",
    "build_sample",
    "decode_shard_sample",
    "deduplicate",
    "iter_shard_records",
    "load_rgb",
    "parse_record",
    "write_finehard_shards",
]
