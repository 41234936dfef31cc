"""One-command evaluation: find the benchmarks under a data root, evaluate one or more models,
write ``results.json`` and a markdown table.

Layout under ``--data-root`` (each path can be overridden with ``--path DATASET.KEY=PATH``)::

    fgovd/                      FG-OVD files: h_attributes_llava.jsonl (FG-CLIP's) / 1_attributes.json (FG-OVD's) /
                                hard.jsonl ...
    coco/val2017/               COCO val2017 images (FG-OVD, COCO boxes, COCO captions)
    coco/train2017/             COCO train2017 images (LVIS val uses some)
    coco/annotations/instances_val2017.json, coco/annotations/captions_val2017.json
    lvis/lvis_v1_val.json
    openimages/validation-annotations-bbox.csv, openimages/class-descriptions-boxable.csv,
    openimages/validation/      <ImageID>.jpg
    sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json, sharegpt4v/images/
    dci/annotations/*.json, dci/photos/
    flickr30k/dataset_flickr30k.json, flickr30k/flickr30k-images/
    imagenet/val/<wnid>/        ImageNet-1K validation, one folder per class
    imagenetv2/<0..999>/        ImageNetV2
    tsv/*.tsv                   image<TAB>caption retrieval files (e.g. Chinese), images relative to tsv/
    matching/*.tsv              image<TAB>text<TAB>label matching files (ICM / IQM style), images relative
                                to matching/
    long_cn/*.txt               LIT-CN / DCI-CN / DOCCI-CN image<TAB>caption files, images relative to long_cn/
    coco_cn/coco_cn_test.txt    COCO-CN captions (images in coco/train2014, coco/val2014)
    flickr30k_cna/flickr30k_cna_test.txt   Flickr30k-CNA token file (images in flickr30k/flickr30k-images)
    BoxClass-CN/valid_category_data_total_zh.json, BoxClass-CN/images/

Benchmarks whose files are absent are skipped (and listed in ``results.json``) unless they
were asked for by name with ``--datasets``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

from ..distributed import get_rank, get_world_size
from ..encoders import Encoder
from ..errors import ConfigError, write_atomically
from ..names import EVAL_TASKS
from ..rerank import CrossEncoderReranker
from .boxcls import prepare_coco_boxes, prepare_lvis_boxes, prepare_openimages_boxes, score_boxcls
from .chinese import (
    prepare_boxclass_cn,
    prepare_coco_cn,
    prepare_fgclip2_flickr30k_cna,
    prepare_long_cn_dir,
    score_boxclass_cn,
    score_chinese_retrieval,
)
from .common import DataError
from .features import FeatureExtractor
from .fgovd import prepare_fgovd, score_fgovd
from .matching import prepare_matching_dir, score_matching
from .retrieval import prepare_caption_file, prepare_dci, prepare_sharegpt4v, prepare_tsv_dir, score_retrieval
from .spec import DatasetSpec, EvalOptions, Prepared, ScoreContext
from .templates import IMAGENET_TEMPLATES
from .zeroshot import load_templates, prepare_image_folder, score_zeroshot
from .zero import (prepare_zero_flickr30k_cna, prepare_zero_matching, prepare_zero_retrieval, score_zero_matching,
                   score_zero_retrieval)

logger = logging.getLogger("fgclip.eval")

TASKS = EVAL_TASKS

# The registry: one line per benchmark (its files, then its own prepare and score functions).
DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("fgovd", "fgovd", "fgovd", (("dir", "fgovd"), ("images", "coco")),
                "FG-OVD subsets (FG-CLIP JSONL or original JSON) on COCO val2017", prepare_fgovd, score_fgovd),
    DatasetSpec("coco_boxes", "boxcls", "boxcls/coco",
                (("ann", "coco/annotations/instances_val2017.json"), ("images", "coco")),
                "COCO val2017 boxes, 80 classes", prepare_coco_boxes, score_boxcls),
    DatasetSpec("lvis_boxes", "boxcls", "boxcls/lvis", (("ann", "lvis/lvis_v1_val.json"), ("images", "coco")),
                "LVIS v1 val boxes, 1203 classes", prepare_lvis_boxes, score_boxcls),
    DatasetSpec("openimages_boxes", "boxcls", "boxcls/openimages",
                (("ann", "openimages/validation-annotations-bbox.csv"),
                 ("classes", "openimages/class-descriptions-boxable.csv"), ("images", "openimages/validation")),
                "Open Images validation boxes", prepare_openimages_boxes, score_boxcls),
    DatasetSpec("sharegpt4v", "retrieval", "retrieval/sharegpt4v",
                (("ann", "sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"), ("images", "sharegpt4v/images")),
                "ShareGPT4V-1k long-caption retrieval", prepare_sharegpt4v, score_retrieval),
    DatasetSpec("dci", "retrieval", "retrieval/dci", (("ann", "dci/annotations"), ("images", "dci/photos")),
                "DCI long-caption retrieval (extra_caption)", prepare_dci, score_retrieval),
    DatasetSpec("coco_captions", "retrieval", "retrieval/coco",
                (("ann", "coco/annotations/captions_val2017.json"), ("images", "coco")),
                "COCO 5k short-caption retrieval", prepare_caption_file, score_retrieval),
    DatasetSpec("flickr30k", "retrieval", "retrieval/flickr30k",
                (("ann", "flickr30k/dataset_flickr30k.json"), ("images", "flickr30k/flickr30k-images")),
                "Flickr30k 1k test short-caption retrieval", prepare_caption_file, score_retrieval),
    DatasetSpec("tsv", "retrieval", "retrieval/tsv", (("dir", "tsv"),),
                "image<TAB>caption retrieval files (one benchmark per .tsv)", prepare_tsv_dir, score_retrieval),
    DatasetSpec("matching", "matching", "matching", (("dir", "matching"),),
                "image<TAB>text<TAB>label matching files, ROC AUC (one benchmark per .tsv)", prepare_matching_dir,
                score_matching),
    DatasetSpec("imagenet", "zeroshot", "zeroshot/imagenet", (("dir", "imagenet/val"), ("classnames", None)),
                "ImageNet-1K validation, 80 templates", prepare_image_folder, score_zeroshot),
    DatasetSpec("imagenetv2", "zeroshot", "zeroshot/imagenetv2", (("dir", "imagenetv2"), ("classnames", None)),
                "ImageNetV2, 80 templates", prepare_image_folder, score_zeroshot),
    DatasetSpec("zero_icr", "retrieval", "retrieval/zero_icr",
                (("ann", "zero/ICR/val/long_itr_val.json"), ("images", "zero/IQR_IQM_ICR_ICM_images")),
                "Zero ICR image-caption retrieval (CCMB release), R@1/5/10 + mean recall", prepare_zero_retrieval,
                score_zero_retrieval),
    DatasetSpec("zero_iqr", "retrieval", "retrieval/zero_iqr",
                (("ann", "zero/IQR/val/short_itr_val.json"), ("images", "zero/IQR_IQM_ICR_ICM_images")),
                "Zero IQR image-query retrieval (CCMB release), R@1/5/10 + mean recall", prepare_zero_retrieval,
                score_zero_retrieval),
    DatasetSpec("zero_icm", "matching", "matching/zero_icm",
                (("ann", "zero/ICM/val/long_itm_val.json"), ("images", "zero/IQR_IQM_ICR_ICM_images")),
                "Zero ICM image-caption matching (CCMB release), ROC AUC", prepare_zero_matching, score_zero_matching),
    DatasetSpec("zero_iqm", "matching", "matching/zero_iqm",
                (("ann", "zero/IQM/val/short_itm_val.json"), ("images", "zero/IQR_IQM_ICR_ICM_images")),
                "Zero IQM image-query matching (CCMB release), ROC AUC", prepare_zero_matching, score_zero_matching),
    DatasetSpec("long_cn", "retrieval", "retrieval/long_cn", (("dir", "long_cn"),),
                "LIT-CN / DCI-CN / DOCCI-CN long-caption retrieval as FG-CLIP 2's long_trans_cn.py (image<TAB>caption, "
                "one benchmark per .txt)", prepare_long_cn_dir, score_chinese_retrieval),
    DatasetSpec("coco_cn", "retrieval", "retrieval/coco_cn", (("ann", "coco_cn/coco_cn_test.txt"), ("images", "coco")),
                "COCO-CN retrieval as FG-CLIP 2's coco_cn.py", prepare_coco_cn, score_chinese_retrieval),
    DatasetSpec("flickr30k_cna", "retrieval", "retrieval/flickr30k_cna",
                (("ann", "flickr30k_cna/flickr30k_cna_test.txt"), ("images", "flickr30k/flickr30k-images")),
                "Flickr30k-CNA retrieval as FG-CLIP 2's flicker_cna.py", prepare_fgclip2_flickr30k_cna,
                score_chinese_retrieval),
    DatasetSpec("flickr30k_cna_r2d2", "retrieval", "retrieval/flickr30k_cna_r2d2",
                (("ann", "flickr30k_cna/flickr30k_cna_test.txt"), ("images", "flickr30k/flickr30k-images")),
                "Flickr30k-CNA retrieval as R2D2's itm_eval (CCMB), R@1/5/10 + mean recall",
                prepare_zero_flickr30k_cna, score_zero_retrieval),
    DatasetSpec("boxclass_cn", "boxcls", "boxcls/boxclass_cn",
                (("ann", "BoxClass-CN/valid_category_data_total_zh.json"), ("images", "BoxClass-CN/images")),
                "BoxClass-CN box classification as FG-CLIP 2's laion_cn_box_cls_ddp.py", prepare_boxclass_cn,
                score_boxclass_cn),
)
DATASETS_BY_NAME = {spec.name: spec for spec in DATASETS}


def parse_path_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["coco_boxes.ann=/x.json", ...]`` -> ``{"coco_boxes.ann": "/x.json"}``, keys checked."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, path_key = key.partition(".")
        spec = DATASETS_BY_NAME.get(name)
        if not sep or not dot or spec is None or path_key not in dict(spec.paths) or not value:
            known = ", ".join(f"{s.name}.{k}" for s in DATASETS for k, _ in s.paths)
            raise ConfigError(f"--path {item}: expected DATASET.KEY=PATH (with '='), DATASET.KEY one of {known}")
        overrides[key] = value
    return overrides


def resolve_paths(spec: DatasetSpec, data_root: str | os.PathLike | None, overrides: dict[str, str]) -> dict:
    """Path key -> ``Path`` (or ``None`` for an unset optional path) of one benchmark."""
    resolved = {}
    for key, default in spec.paths:
        value = overrides.get(f"{spec.name}.{key}")
        if value is None and default is not None and data_root is not None:
            value = Path(data_root, default)
        resolved[key] = None if value is None else Path(value)
    return resolved


def describe_layout(data_root: str | os.PathLike | None = None) -> str:
    """A table of the benchmarks, their path keys and where they are looked for."""
    lines = []
    for spec in DATASETS:
        lines.append(f"{spec.name} [{spec.task}] {spec.description}")
        for key, default in spec.paths:
            where = "(optional, no default)" if default is None else (
                str(Path(data_root, default)) if data_root else f"<data-root>/{default}")
            lines.append(f"    {spec.name}.{key}: {where}")
    return "\n".join(lines)


def prepare(
    data_root: str | os.PathLike | None,
    tasks: Sequence[str] = TASKS,
    datasets: Sequence[str] | None = None,
    overrides: dict[str, str] | None = None,
    options: EvalOptions | None = None,
) -> tuple[list[Prepared], dict[str, str]]:
    """Parse every present benchmark of ``tasks`` (or exactly ``datasets``).

    Returns:
        the parsed benchmarks, and ``{dataset name: reason}`` for those skipped as absent.
    """
    options = options or EvalOptions()
    overrides = overrides or {}
    unknown_tasks = [t for t in tasks if t not in TASKS]
    if unknown_tasks:
        raise ConfigError(f"--tasks: unknown task(s) {', '.join(unknown_tasks)}; expected some of {', '.join(TASKS)}")
    if datasets:
        unknown = [d for d in datasets if d not in DATASETS_BY_NAME]
        if unknown:
            raise ConfigError(f"--datasets: unknown dataset(s) {', '.join(unknown)}; expected some of "
                              f"{', '.join(DATASETS_BY_NAME)} (fgclip eval --list-datasets shows the layout)")
        specs = [DATASETS_BY_NAME[d] for d in datasets]
    else:
        specs = [spec for spec in DATASETS if spec.task in tasks]
    prepared, skipped = [], {}
    for spec in specs:
        paths = resolve_paths(spec, data_root, overrides)
        first = paths[spec.paths[0][0]]
        if first is None or not first.exists():
            reason = f"not found: {first}" if first is not None else "no path (give --data-root or --path)"
            if datasets:
                raise DataError(f"dataset {spec.name!r}: {reason}")
            skipped[spec.name] = reason
            continue
        prepared.extend(spec.prepare(spec, paths, options))
    if not prepared:
        where = data_root if data_root is not None else "--path"
        raise DataError(where, f"no benchmark found for tasks {', '.join(tasks)} ({len(specs)} looked for, none "
                               "present); `fgclip eval --list-datasets --data-root DIR` prints the expected layout")
    return prepared, skipped


def evaluate(
    extractor: FeatureExtractor, prepared: Sequence[Prepared], reranker=None, rerank_top_k: int = 128,
    templates: Sequence[str] = IMAGENET_TEMPLATES,
) -> dict[str, dict[str, float]]:
    """Run every parsed benchmark with one model; ``{result label: metrics}`` (adds ``seconds``).

    A :class:`~fgclip.rerank.CrossEncoderReranker` adds re-ranked recalls to the retrieval benchmarks
    and its AUC to the matching ones.
    """
    results = {}
    context = ScoreContext(templates, reranker, rerank_top_k)
    for item in prepared:
        start = time.perf_counter()
        metrics = item.spec.score(extractor, item, context)
        seconds = time.perf_counter() - start
        for label, values in metrics.items():
            results[label] = {**values, "seconds": round(seconds, 3)}
            if get_rank() == 0:
                summary = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
                logger.info("%s: %s (%.1fs)", label, summary, seconds)
    return results


def _is_rate(key: str) -> bool:
    return key not in ("seconds",) and not key.startswith("num_")


def markdown_table(report: dict) -> str:
    """Rows: benchmark and metric; columns: models; rates in percent."""
    models = list(report["results"])
    first = report["results"][models[0]]
    lines = [
        "| benchmark | metric | n | " + " | ".join(models) + " |",
        "|---|---|---|" + "---|" * len(models),
    ]
    for label, metrics in first.items():
        size = " / ".join(str(v) for k, v in metrics.items() if k.startswith("num_"))
        for key in (k for k in metrics if _is_rate(k)):
            values = [report["results"][m].get(label, {}).get(key) for m in models]
            cells = ["-" if v is None else f"{100 * v:.2f}" for v in values]
            lines.append(f"| {label} | {key} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class RunConfig:
    """Everything :func:`run_evaluation` needs besides the models."""

    data_root: str | None
    output_dir: str
    tasks: Sequence[str] = TASKS
    datasets: Sequence[str] | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    options: EvalOptions = field(default_factory=EvalOptions)
    batch_size: int = 64
    text_batch_size: int = 256
    num_workers: int = 2
    bf16: bool = False
    progress: bool = True
    rerankers: dict[str, str] = field(default_factory=dict)
    rerank_top_k: int = 128


ModelEntry = tuple[str, Union[Encoder, Callable[[], Encoder]], dict]


def run_evaluation(models: Sequence[ModelEntry], config: RunConfig) -> dict:
    """Evaluate ``models`` on every benchmark found.

    Args:
        models: ``(name, model or zero-argument loader, info for the report)``; loaders are
            called one model at a time, so only one model is in memory.
    Every rank computes the same results; rank 0 writes ``results.json`` and ``results.md``
    to ``config.output_dir``.
    """
    templates = load_templates(config.options.templates)
    prepared, skipped = prepare(config.data_root, config.tasks, config.datasets, config.overrides, config.options)
    if get_rank() == 0:
        for name, reason in skipped.items():
            logger.info("skipping %s: %s", name, reason)
    report = {
        "settings": {
            "data_root": config.data_root,
            "tasks": list(config.tasks),
            "datasets": [item.label for item in prepared],
            "batch_size": config.batch_size,
            "bf16": config.bf16,
            "world_size": get_world_size(),
            "options": asdict(config.options),
        },
        "models": {name: info for name, _, info in models},
        "skipped": skipped,
        "results": {},
    }
    unknown = sorted(set(config.rerankers) - {name for name, _, _ in models})
    if unknown:
        raise ConfigError(f"--reranker: given for unknown model(s) {', '.join(unknown)}; name a --model")
    report["settings"]["rerankers"] = dict(config.rerankers)
    for name, model, _ in models:
        model = model if isinstance(model, Encoder) else model()
        extractor = FeatureExtractor(
            model, batch_size=config.batch_size, text_batch_size=config.text_batch_size,
            num_workers=config.num_workers, bf16=config.bf16, progress=config.progress,
        )
        reranker = None
        if name in config.rerankers:
            reranker = CrossEncoderReranker.from_pretrained(config.rerankers[name]).to(model.device).eval()
        report["results"][name] = evaluate(extractor, prepared, reranker, config.rerank_top_k, templates)
    if get_rank() == 0:
        output = Path(config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        write_atomically(output / "results.json", json.dumps(report, indent=2) + "\n")
        write_atomically(output / "results.md", markdown_table(report))
    return report
