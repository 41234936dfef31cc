"""Training recipes as YAML files: ``model`` / ``data`` / ``loss`` / ``training`` sections.

A recipe may start from others with ``_base_: other.yaml`` (a path relative to the file, or
a list of them, merged in order), as MMDetection configs do; ``key.sub=value`` overrides
from the command line are applied last, their values parsed as YAML (``1e-4``, ``true``,
``null``, ``{preset: tiny}``...). Numbers in exponent form without a dot (``1e-4``) are
read as floats, as in YAML 1.2 (PyYAML's YAML 1.1 reads them as strings).

The ``training`` section holds ``transformers.TrainingArguments`` fields verbatim. Other
paths in a recipe (data files, output and DeepSpeed config) are relative to the working
directory, the repository root for the shipped recipes.

Every key is checked: an unknown section or key, or a value of the wrong type, raises a
``ValueError`` naming the recipe and the key.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers.training_args as hf_training_args
import yaml
from transformers import TrainingArguments

from ..errors import ConfigError
from ..families import Family, training_families
from ..losses import REGION_SCOPES
from ..rerank.distillation import Distillation

# model.reranker: the caption kind it learns to match, hard negatives per positive, cross-encoder size,
# R2D2's pre-ranking on the dual encoder and its two-way distillation (fgclip.rerank.distillation).
RERANKER_KEYS = ("text_kind", "negatives", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "dropout", "positive_weight", "pre_ranking", "distill_momentum",
                 "distill_target_weight", "distill_feature_weight", "distill_feature_mask_ratio", "distill_queue_size")
SECTIONS = ("model", "data", "loss", "training")
# FG-CLIP 2 training: the square images with a side under 128 px are resized to (the official box_image_size default)
OFFICIAL_SMALL_IMAGE_SIZE = 224


def model_inits(family: Family) -> tuple[str, ...]:
    """How a family's weights may start: a random config, its plain dual encoder, or a checkpoint."""
    return ("config", family.training.base_init, "pretrained")


def trained_family(name: str) -> Family:
    """The training family ``model.family`` names (:func:`fgclip.families.training_families`)."""
    families = training_families()
    if name not in families:
        raise ValueError(f"model.family: expected one of {', '.join(families)}, got {name!r}")
    return families[name]


def foreign_options(section: str, settings, family: str, keys: str) -> None:
    """Raise a ValueError naming the options of other families (their training recipe field ``keys``)
    that ``settings`` (the recipe's ``section``) sets for ``family``."""
    own = set(getattr(trained_family(family).training, keys))
    owners: dict[str, list[str]] = {}
    for other in training_families().values():
        for key in getattr(other.training, keys):
            if key not in own and getattr(settings, key, None) not in (None, False):
                owners.setdefault(key, []).append(other.title)
    if owners:
        named = "; ".join(f"{section}.{key}: {' / '.join(titles)} only" for key, titles in sorted(owners.items()))
        raise ValueError(f"{named}, not for model.family={family!r}")

# TrainingArguments defaults of every recipe: the collator's keys are not forward()'s
# column names, nothing is reported unless asked, and FGCLIPForTraining gives every
# trainable parameter a gradient at every step (no DDP search for unused ones).
TRAINING_DEFAULTS = {"remove_unused_columns": False, "report_to": "none", "ddp_find_unused_parameters": False}


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's scalars: ``1e-4`` / ``3E+2`` (no dot) are floats, and only
    ``true`` / ``false`` are booleans (``save_strategy: no`` stays the string ``"no"``)."""


BOOL_TAG = "tag:yaml.org,2002:bool"
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_value(text: str) -> Any:
    """A YAML scalar or flow collection, e.g. ``"1e-4"`` -> 0.0001, ``"[a, b]"`` -> ["a", "b"]."""
    return yaml.load(text, Loader=RecipeLoader)


@dataclass
class ModelSettings:
    """Which model (``family: fgclip`` or ``fgclip2``) and where its weights come from.

    ``init: config`` builds a random model from ``config`` (``preset`` plus keyword
    arguments of the preset); ``init: clip`` (FG-CLIP) / ``siglip2`` (FG-CLIP 2) is the
    stage-1 start from the plain dual encoder at ``path`` (:meth:`FGCLIPModel.from_clip`,
    :meth:`FGCLIP2Model.from_siglip2`); ``init: pretrained`` loads a checkpoint at ``path``
    (stage 2). FG-CLIP 2 reads its tokenizer from ``tokenizer`` (a directory or hub id),
    by default from ``path``.

    ``reranker`` (a mapping of :data:`RERANKER_KEYS`) trains an R2D2-style cross-encoder
    re-ranker (:mod:`fgclip.rerank`) on the frozen model instead of the model itself
    (``pre_ranking: true``: on the model trained with R2D2's global contrastive loss);
    ``distill_*`` keys switch on R2D2's target- / feature-guided distillation (off by default).
    """

    family: str = "fgclip"
    init: str = "config"
    path: str | None = None
    config: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    tokenizer: str | None = None
    reranker: dict[str, Any] | None = None

    def __post_init__(self):
        family = trained_family(self.family)
        inits, presets = model_inits(family), family.training.presets
        if self.init not in inits:
            raise ValueError(f"model.init: expected one of {', '.join(inits)} for {self.family}, got {self.init!r}")
        if self.init != "config" and not self.path:
            raise ValueError(f"model.path: required with model.init={self.init!r}")
        if self.init == "config" and self.config.get("preset", "tiny") not in presets:
            raise ValueError(f"model.config.preset: expected one of {', '.join(presets)} for {self.family}, "
                             f"got {self.config.get('preset')!r}")
        if not family.training.builtin_tokenizer and not (self.tokenizer or self.path):
            raise ValueError(f"model.tokenizer: required for {self.family} when model.path is not set")
        unknown = sorted(set(self.reranker or {}) - set(RERANKER_KEYS))
        if unknown:
            raise ValueError(f"model.reranker: unknown key(s) {unknown}; it takes {', '.join(RERANKER_KEYS)}")
        if self.reranker:
            try:
                Distillation(**{key.removeprefix("distill_"): value for key, value in self.reranker.items()
                                if key.startswith("distill_")})
            except (TypeError, ValueError) as error:
                raise ValueError(f"model.reranker: {error}") from None

    def build_config(self):
        """The family's configuration from ``config``: its preset, given the other keys."""
        options = dict(self.config)
        return trained_family(self.family).presets[options.pop("preset", "tiny")](**options)

    def load_tokenizer(self):
        """The tokenizer ``tokenizer`` or ``path`` names; ``None`` for a family whose processor builds its
        own (FG-CLIP: the CLIP BPE tokenizer, offline)."""
        if trained_family(self.family).training.builtin_tokenizer:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer or self.path)


@dataclass
class DataSettings:
    """FineHARD training data: a JSON / JSONL file with an image root, or webdataset shards.

    ``resize_mode`` is FG-CLIP's (``squash``, the default, or ``pad`` to a square). FG-CLIP 2 only: ``max_num_patches``
    is the NaFlex patch budget, ``auto`` (the default, as the official training collator: every
    image of a batch takes the smallest of 128 / 256 / 576 / 784 / 1024 patches that holds the
    batch's largest image, whatever the launch's ``--max_num_patches``) or a fixed integer;
    ``small_image_size`` (the official ``box_image_size``: 224 by default, 512 in the official
    launch; 0 turns it off) is the square that images with a side under 128 pixels are resized
    to first, as the official training dataset does. ``group_by_language`` draws
    batches of one language (the records' ``is_cn``), as FG-CLIP 2 trains. ``allow_outside_root``
    accepts ``f_path`` values that are absolute or leave ``image_root`` (refused by default).
    """

    train: str = ""
    image_root: str = "."
    shards: bool = False
    max_boxes: int = 4
    skip_bad_records: bool = False
    allow_outside_root: bool = False
    resize_mode: str | None = None
    group_by_language: bool = False
    max_num_patches: int | str | None = None
    small_image_size: int | None = None

    def __post_init__(self):
        if not self.train:
            raise ValueError("data.train: path of the FineHARD file (or shard pattern) is required")
        if self.max_boxes < 0:
            raise ValueError(f"data.max_boxes: expected an integer >= 0, got {self.max_boxes}")
        if self.max_num_patches not in (None, "auto") and not (
                isinstance(self.max_num_patches, int) and self.max_num_patches >= 1):
            raise ValueError(f"data.max_num_patches: expected 'auto' or an integer >= 1, got {self.max_num_patches!r}")
        if self.small_image_size is not None and not (
                isinstance(self.small_image_size, int) and self.small_image_size >= 0):
            raise ValueError(f"data.small_image_size: expected an integer >= 0, got {self.small_image_size!r}")
        if self.group_by_language and self.shards:
            raise ValueError("data.group_by_language: needs a JSON / JSONL file (shards stream in their own "
                             "order); write one language per shard instead")

    def processor_options(self, family: str) -> dict[str, Any]:
        """The image options of the family's processor that this section sets (FG-CLIP 2's budget is
        ``auto`` unless set)."""
        self.check_family(family)
        options = {"resize_mode": self.resize_mode or "squash",
                   "max_num_patches": "auto" if self.max_num_patches is None else self.max_num_patches}
        return {key: value for key, value in options.items() if key in trained_family(family).training.data_options}

    def dataset_options(self, family: str, batch_size: int) -> dict[str, Any]:
        """The options of the family's FineHARD datasets that this section sets: ``small_image_size``,
        and for shards ``batch_size`` (the per-device batch, so each batch's images share one
        processor call)."""
        self.check_family(family)
        options = {"batch_size": batch_size} if self.shards else {}
        if "small_image_size" in trained_family(family).training.data_options:
            size = OFFICIAL_SMALL_IMAGE_SIZE if self.small_image_size is None else self.small_image_size
            options["small_image_size"] = size or None
        return options

    def check_family(self, family: str) -> None:
        """Raise a ValueError naming the other families' options that are set for ``family``."""
        foreign_options("data", self, family, "data_options")


@dataclass
class LossSettings:
    """Which terms train (stage 1: the global loss only; stage 2 adds the others), their weights
    and the temperatures.

    Unset weights take the family's paper values: FG-CLIP regional 0.1, hard negatives 0.5;
    FG-CLIP 2 regional 0.2, TIC 0.1 (``tic_weight``, FG-CLIP 2 only, with the regional term),
    hard-negative block 0.5.

    FG-CLIP only: ``region_scope`` is the batch of the regional and hard-negative terms under
    ``torch.distributed`` (``rank``, the official default: each rank's own regions; ``global``:
    all ranks' regions); ``region_scales_from_logit_scale`` starts ``logit_scale_finegraind`` and
    ``logit_scale_hardneg`` from ``logit_scale`` (:func:`~fgclip.losses.copy_logit_scale_to_region_scales`),
    as the official stage-2 launch does. ``max_logit_scale`` (both families) clamps every
    ``logit_scale*`` parameter to ``[0, ln(max_logit_scale)]`` after each optimizer step
    (:func:`~fgclip.losses.clamp_logit_scales`, CLIP / open_clip: 100); null (default, the
    official FG-CLIP) leaves the temperatures unbounded.
    """

    regional: bool = False
    hard_negatives: bool = False
    regional_weight: float | None = None
    hard_negative_weight: float | None = None
    tic_weight: float | None = None
    region_scope: str | None = None
    region_scales_from_logit_scale: bool = False
    max_logit_scale: float | None = None

    def __post_init__(self):
        if self.region_scope is not None and self.region_scope not in REGION_SCOPES:
            raise ValueError(f"loss.region_scope: expected one of {', '.join(REGION_SCOPES)}, "
                             f"got {self.region_scope!r}")
        if self.max_logit_scale is not None and self.max_logit_scale <= 1:
            raise ValueError(f"loss.max_logit_scale: expected a value above 1 or null, got {self.max_logit_scale}")

    def check_family(self, family: str) -> None:
        """Raise a ValueError naming the options of other families' losses that are set for ``family``."""
        foreign_options("loss", self, family, "loss_options")
        foreign_options("loss", self, family, "weights")

    def loss_arguments(self, family: str) -> dict[str, Any]:
        """Keyword arguments of the family's loss class: the weights that are set, and FG-CLIP's
        ``region_scope`` when set."""
        self.check_family(family)
        scope = {} if self.region_scope is None else {"region_scope": self.region_scope}
        return {**self.weights(family), **scope}

    def weights(self, family: str) -> dict[str, float]:
        """Keyword arguments of the family's loss class for the weights that are set."""
        self.check_family(family)
        names = trained_family(family).training.weights
        return {names[key]: value for key, value in vars(self).items() if key in names and value is not None}


@dataclass
class TrainConfig:
    model: ModelSettings
    data: DataSettings
    loss: LossSettings
    training: dict[str, Any]
    source: str = ""

    def __post_init__(self):
        try:
            self.loss.check_family(self.model.family)
            self.data.check_family(self.model.family)
        except ValueError as error:
            raise ValueError(f"{self.source}: {error}") from None
        if self.model.reranker is not None and (self.loss.regional or self.loss.hard_negatives):
            raise ValueError(f"{self.source}: model.reranker trains a re-ranker on the frozen model; "
                             "loss.regional / loss.hard_negatives do not apply")

    def to_dict(self) -> dict[str, Any]:
        return {"model": vars(self.model), "data": vars(self.data), "loss": vars(self.loss),
                "training": self.training}

    def check_hardware(self) -> None:
        """Raise a :class:`~fgclip.errors.ConfigError` saying what to set when this machine cannot run the
        recipe's ``tf32`` or ``bf16`` (:func:`hardware_problem`)."""
        problem = hardware_problem(self.training)
        if problem:
            raise ConfigError(f"{self.source}: {problem}")

    def training_arguments(self) -> TrainingArguments:
        """``TrainingArguments`` of the ``training`` section over :data:`TRAINING_DEFAULTS`, once
        :meth:`check_hardware` passes."""
        self.check_hardware()
        return TrainingArguments(**{**TRAINING_DEFAULTS, **self.training})


def hardware_problem(training: dict[str, Any]) -> str | None:
    """What the GPU recipes' ``tf32`` / ``bf16`` need that this machine lacks, and the overrides that run
    them here (transformers' own checks, asked first so that one line names every change), or ``None``."""
    hf = hf_training_args  # the checks TrainingArguments runs, looked up at each call
    gpu = torch.cuda.is_available()
    needs, changes = [], []
    if training.get("tf32") and not hf.is_torch_tf32_available():
        needs.append("training.tf32 needs an Ampere or newer CUDA GPU")
        changes.append("training.tf32=false")
    if (training.get("bf16") and not training.get("use_cpu") and not hf.is_torch_bf16_gpu_available()
            and not hf.is_torch_xla_available()):
        needs.append("training.bf16 needs an Ampere or newer GPU" + ("" if gpu else ", or training.use_cpu on a CPU"))
        changes.append("training.bf16=false" if gpu else "training.use_cpu=true")
    if not needs:
        return None
    where = "this GPU is older" if gpu else "no CUDA GPU here"
    return f"{'; '.join(needs)} ({where}): add {' '.join(changes)} to train {'without them' if gpu else 'on the CPU'}"


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
        raise ValueError(f"{path}: _base_ cycle through {' -> '.join(map(str, chain + (path,)))}")
    if not path.is_file():
        where = f" (_base_ of {chain[-1]})" if chain else ""
        raise ConfigError(path, f"recipe file not found{where}")
    try:
        content = yaml.load(path.read_text(), Loader=RecipeLoader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(path, f"YAML syntax error: {problem}", None if mark is None else mark.line + 1) from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a recipe is a mapping of sections, got {type(content).__name__}")
    bases = content.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ValueError(f"{path}: _base_: expected a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, _read(path.parent / base, chain + (path,)))
    return _merge(merged, content)


def apply_overrides(content: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; the value is parsed by :func:`parse_value`."""
    content = copy.deepcopy(content)
    for override in overrides:
        dotted, separator, raw = override.partition("=")
        keys = dotted.split(".")
        if not separator or not all(keys):
            raise ValueError(f"override {override!r}: expected section.key=value")
        node = content
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {'.'.join(keys[:depth + 1])} is not a section")
        node[keys[-1]] = parse_value(raw)
    return content


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(expected))
    if expected is type(None):
        return "null"
    return getattr(typing.get_origin(expected) or expected, "__name__", str(expected))


def _check_type(value: Any, expected: Any, key: str, source: str) -> Any:
    """``value`` checked against a simple annotation (bool / int / float / str / dict / list, unions
    of them; ints are accepted for floats). Other annotations (enums...) pass through."""
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        for option in options:
            try:
                return _check_type(value, option, key, source)
            except ValueError:
                continue
        raise ValueError(f"{source}: {key}: expected {_type_name(expected)}, got {value!r}")
    base = typing.get_origin(expected) or expected
    if base is type(None):
        ok = value is None
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base in (str, dict, list):
        ok = isinstance(value, base)
    else:
        return value
    if not ok:
        raise ValueError(f"{source}: {key}: expected {_type_name(expected)}, got {value!r}")
    return value


def _check_keys(values: Any, known: list[str], section: str, source: str) -> dict:
    if not isinstance(values, dict):
        raise ValueError(f"{source}: {section}: expected a mapping of keys, got {values!r}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        names = ", ".join(f"{section}.{key}" for key in unknown)
        raise ValueError(f"{source}: unknown key(s) {names}; {section} takes: {', '.join(sorted(known))}")
    return values


def _build_section(settings: type, values: Any, section: str, source: str):
    hints = typing.get_type_hints(settings)
    names = [item.name for item in dataclasses.fields(settings)]
    values = _check_keys(values, names, section, source)
    checked = {key: _check_type(value, hints[key], f"{section}.{key}", source) for key, value in values.items()}
    try:
        return settings(**checked)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


# Training values checked before anything loads (torch, the DataLoader or the scheduler would stop
# with a traceback much later): (key, smallest allowed value, what to write).
TRAINING_MINIMA = (
    ("learning_rate", 0.0, "a learning rate >= 0"),
    ("weight_decay", 0.0, "a weight decay >= 0"),
    ("per_device_train_batch_size", 1, "a batch size of at least 1"),
    ("gradient_accumulation_steps", 1, "at least 1 step"),
    ("warmup_steps", 0, "a number of warm-up steps >= 0"),
    ("max_grad_norm", 0.0, "a gradient norm >= 0 (0 turns clipping off)"),
    ("logging_steps", 0, "a number of steps >= 0"),
    ("dataloader_num_workers", 0, "a number of workers >= 0"),
)


def _check_training(values: Any, source: str) -> dict[str, Any]:
    hints = typing.get_type_hints(TrainingArguments)
    names = [item.name for item in dataclasses.fields(TrainingArguments) if item.init]
    values = _check_keys(values, names, "training", source)
    checked = {key: _check_type(value, hints[key], f"training.{key}", source) for key, value in values.items()}
    if checked.get("num_train_epochs", 1) <= 0 and checked.get("max_steps", -1) <= 0:
        raise ConfigError(f"{source}: training.num_train_epochs: expected a number above 0 (or max_steps > 0), "
                          f"got {checked['num_train_epochs']!r}")
    for key, smallest, what in TRAINING_MINIMA:
        if key in checked and checked[key] is not None and checked[key] < smallest:
            raise ConfigError(f"{source}: training.{key}: expected {what}, got {checked[key]!r}")
    return checked


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe with its ``_base_`` chain and overrides; unknown or mistyped keys, YAML syntax errors
    and invalid values raise a :class:`~fgclip.errors.ConfigError` naming the recipe."""
    source = str(path)
    try:
        return _load_config(source, overrides)
    except ConfigError:
        raise
    except ValueError as error:
        message = str(error)
        raise ConfigError(message if message.startswith(source) else f"{source}: {message}") from None


def _load_config(source: str, overrides: list[str]) -> TrainConfig:
    content = apply_overrides(_read(Path(source)), list(overrides))
    unknown = sorted(set(content) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {', '.join(SECTIONS)}")
    sections = {
        name: _build_section(settings, content.get(name, {}), name, source)
        for name, settings in (("model", ModelSettings), ("data", DataSettings), ("loss", LossSettings))
    }
    return TrainConfig(training=_check_training(content.get("training", {}), source), source=source, **sections)
