"""Detection configs read for the tools, with errors that name the config file.

A config is Python that mmengine executes; its syntax errors, exceptions and missing ``_base_``
files are reported as ``<config>[:<line>]: ...``. A loaded config's pipelines are sized by its
``image_size`` (:func:`size_pipelines`). Checks made while the Runner builds the model
and datasets raise :class:`~fgclip.errors.ConfigError` naming the config field;
:func:`naming_config` puts the config file in front of them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from mmengine.config import Config

from fgclip.errors import ConfigError

from .extra import DetectionExtraMissing


# Pipeline steps sized by the config's image_size: type -> (the field set, then the fields that
# already fix the step's size).
SIZED_STEPS = {
    "Resize": ("scale", "scale_factor"),
    "RandomResize": ("scale",),
    "RandomCrop": ("crop_size",),
    "Pad": ("size", "size_divisor", "pad_to_square"),
}
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def sized_pipeline(pipeline: Sequence, image_size: Sequence[int] | None, where: str) -> list:
    """``pipeline`` with ``image_size`` as the size of each step of :data:`SIZED_STEPS` that sets
    none of its size fields; other steps pass as they are.

    Raises:
        ConfigError: such a step and no ``image_size``.
    """
    steps = []
    for step in pipeline:
        fields = SIZED_STEPS.get(step.get("type")) if isinstance(step, dict) else None
        if fields and not any(field in step for field in fields):
            if image_size is None:
                raise ConfigError(f"{where}: step {step['type']} sets no {fields[0]} and the config has no image_size")
            step = {**step, fields[0]: tuple(image_size)}
        steps.append(step)
    return steps


def size_pipelines(cfg: Config) -> None:
    """Size, by ``cfg.image_size``, ``cfg.train_pipeline``, ``cfg.test_pipeline`` and the pipeline
    of every dataloader's dataset (and of the datasets it wraps), in place."""
    image_size = cfg.get("image_size")
    for key in ("train_pipeline", "test_pipeline"):
        if key in cfg:
            cfg[key] = sized_pipeline(cfg[key], image_size, key)
    datasets = [(f"{key}.dataset", cfg[key].get("dataset")) for key in LOADERS if isinstance(cfg.get(key), dict)]
    while datasets:
        where, dataset = datasets.pop()
        if not isinstance(dataset, dict):
            continue
        if "pipeline" in dataset:
            dataset["pipeline"] = sized_pipeline(dataset["pipeline"], image_size, f"{where}.pipeline")
        datasets.append((f"{where}.dataset", dataset.get("dataset")))
        datasets += [(f"{where}.datasets.{i}", inner) for i, inner in enumerate(dataset.get("datasets") or ())]


def load_config(path: str, options: dict | None = None) -> Config:
    """``Config.fromfile(path)`` with ``options`` (``--cfg-options``) merged in, its pipelines
    sized by its ``image_size`` (:func:`size_pipelines`)."""
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as error:
        missing = error.filename or path
        what = "config file not found" if str(missing) == str(path) else f"its _base_ file {missing} does not exist"
        raise ConfigError(path, what) from error
    except SyntaxError as error:
        raise ConfigError(path, f"Python syntax error ({error.msg}), column {error.offset}", line=error.lineno) from error
    except Exception as error:  # a config is executed: its own exceptions are the config's fault
        raise ConfigError(path, f"cannot be loaded ({type(error).__name__}: {error})") from error
    if options:
        cfg.merge_from_dict(options)
    with naming_config(path):
        size_pipelines(cfg)
    return cfg


@contextlib.contextmanager
def naming_config(path: str) -> Iterator[None]:
    """Around loading, building and running from the config at ``path``: a :class:`ConfigError`
    about a config field is re-raised with ``path`` in front (errors naming a file pass through)."""
    try:
        yield
    except DetectionExtraMissing:
        raise
    except ConfigError as error:
        if str(error).startswith(f"{path}:"):
            raise
        raise ConfigError(path, str(error)) from error
