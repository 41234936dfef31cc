"""What a benchmark is to the evaluation runner: a :class:`DatasetSpec` names its files and carries
its own ``prepare`` (parse the files) and ``score`` (evaluate one parsed benchmark) functions, so a
new benchmark is one module with those two functions plus one line in the runner's registry."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class EvalOptions:
    """Benchmark settings that are not paths.

    Args:
        fgovd_subsets: FG-OVD subsets to run (default: every subset found).
        max_captions: captions kept per image in COCO / Flickr30k caption files.
        tsv_text_kind: text path of TSV captions and matching texts (``short`` or ``long``).
        sharegpt4v_limit: records of the ShareGPT4V file used (the benchmark's 1000).
        templates: prompt templates of box and zero-shot classification: ``openai`` (80),
            ``zh`` (Chinese) or a file with one template per line.
        allow_outside_root: accept image paths in benchmark files that are absolute or leave
            their image root (``--allow-outside-root``); refused by default.
    """

    fgovd_subsets: Sequence[str] | None = None
    max_captions: int | None = 5
    tsv_text_kind: str = "short"
    sharegpt4v_limit: int = 1000
    templates: str = "openai"
    allow_outside_root: bool = False


@dataclass(frozen=True)
class ScoreContext:
    """What scoring needs besides the features: the classification prompt templates and an optional
    cross-encoder re-ranker (with the number of candidates it re-orders)."""

    templates: Sequence[str]
    reranker: Any = None
    rerank_top_k: int = 128


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark: its task, the label of its results, its paths (key -> default under the data root;
    ``None`` for optional paths; the first decides whether the benchmark is present), and

    * ``prepare(spec, paths, options) -> list[Prepared]``: parse its files (one benchmark, or one
      per file of a directory);
    * ``score(extractor, prepared, context) -> {result label: metrics}``.
    """

    name: str
    task: str
    label: str
    paths: tuple[tuple[str, str | None], ...]
    description: str
    prepare: Callable[..., list["Prepared"]]
    score: Callable[..., dict[str, dict[str, float]]]


@dataclass
class Prepared:
    """A parsed benchmark ready for any model."""

    spec: DatasetSpec
    label: str
    payload: Any


def single(spec: DatasetSpec, payload: Any) -> list[Prepared]:
    """The one parsed benchmark of ``spec``, under its own label."""
    return [Prepared(spec, spec.label, payload)]
