"""Training recipes as YAML files: ``model`` / ``data`` / ``loss`` / ``training`` sections.

A recipe may start from others with ``_base_: other.yaml`` (a path relative to the file, or
a list of them, merged in order), as MMDetection configs do; ``key.sub=value`` overrides
from the command line are applied last, their values parsed as YAML (``1e-4``, ``true``...).
The ``training`` section holds ``transformers.TrainingArguments`` fields verbatim.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configuration_fgclip import FGCLIPConfig
from ..testing import tiny_config

MODEL_PRESETS = {"vit_b16": FGCLIPConfig.vit_b16, "vit_l14_336": FGCLIPConfig.vit_l14_336, "tiny": tiny_config}
MODEL_INITS = ("config", "clip", "pretrained")


@dataclass
class ModelSettings:
    """Where the weights come from.

    ``init: config`` builds a random model from ``config`` (``preset`` plus keyword
    arguments of the preset); ``init: clip`` is the stage-1 start from a plain CLIP checkpoint
    at ``path`` (:meth:`FGCLIPModel.from_clip`); ``init: pretrained`` loads an FG-CLIP
    checkpoint at ``path`` (stage 2).
    """

    init: str = "config"
    path: str | None = None
    config: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})

    def __post_init__(self):
        if self.init not in MODEL_INITS:
            raise ValueError(f"model.init: expected one of {', '.join(MODEL_INITS)}, got {self.init!r}")
        if self.init != "config" and not self.path:
            raise ValueError(f"model.path: required with model.init={self.init!r}")
        if self.init == "config" and self.config.get("preset", "tiny") not in MODEL_PRESETS:
            raise ValueError(f"model.config.preset: expected one of {', '.join(MODEL_PRESETS)}, "
                             f"got {self.config.get('preset')!r}")

    def build_config(self) -> FGCLIPConfig:
        options = dict(self.config)
        return MODEL_PRESETS[options.pop("preset", "tiny")](**options)


@dataclass
class DataSettings:
    """FineHARD training data: a JSON / JSONL file with an image root, or webdataset shards."""

    train: str = ""
    image_root: str = "."
    shards: bool = False
    max_boxes: int = 4
    skip_bad_records: bool = False
    resize_mode: str = "squash"

    def __post_init__(self):
        if not self.train:
            raise ValueError("data.train: path of the FineHARD file (or shard pattern) is required")


@dataclass
class LossSettings:
    """Which FG-CLIP terms train: stage 1 uses the global loss only, stage 2 adds the others."""

    regional: bool = False
    hard_negatives: bool = False
    regional_weight: float = 0.1
    hard_negative_weight: float = 0.5


@dataclass
class TrainConfig:
    model: ModelSettings
    data: DataSettings
    loss: LossSettings
    training: dict[str, Any]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model": vars(self.model), "data": vars(self.data), "loss": vars(self.loss),
                "training": self.training}


def _merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ValueError(f"{path}: _base_ cycle through {' -> '.join(map(str, chain))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a recipe is a mapping of sections, got {type(content).__name__}")
    bases = content.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _read(path.parent / base, chain + (path,)))
    return _merge(merged, content)


def apply_overrides(content: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; the value is parsed as YAML."""
    content = copy.deepcopy(content)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r}: expected key.path=value")
        dotted, raw = override.split("=", 1)
        keys = dotted.split(".")
        node = content
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {key} is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return content


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe with its ``_base_`` chain and overrides; unknown keys are errors."""
    content = apply_overrides(_read(Path(path)), list(overrides))
    unknown = set(content) - {"model", "data", "loss", "training"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected model, data, loss, training")
    sections = {}
    for name, settings in (("model", ModelSettings), ("data", DataSettings), ("loss", LossSettings)):
        try:
            sections[name] = settings(**content.get(name, {}))
        except TypeError as error:
            raise ValueError(f"{path}: section {name}: {error}") from None
    return TrainConfig(training=dict(content.get("training", {})), source=str(path), **sections)
