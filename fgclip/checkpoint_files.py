"""Checkpoint files: the one integrity check of weight and state files (:func:`check_file`, and
:func:`check_checkpoint_files` for a model directory) and the one reader of the parameter names a
checkpoint stores (:func:`stored_parameter_names`), the one reader of weight files (:func:`read_tensor_file`,
:func:`read_checkpoint_weights`), with one wording for pickles that torch's safe loader refuses
(:func:`refused_pickle`) and their one conversion (:func:`pickle_to_safetensors`, ``fgclip
to-safetensors``). The loader, the trainer's resume checks, the
FG-CLIP 2 model and the detector's checkpoint loading all go through these, so a damaged file is
reported the same way wherever it is read.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError

# A weight only FG-CLIP checkpoints have (upstream ones keep ``model_type: clip`` in config.json).
FGCLIP_MARKER_KEY = "text_model.embeddings.position_embedding_res.weight"
# Weight files of a transformers checkpoint, each format's index of shards first (the order they are read in).
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
WEIGHT_INDEXES = WEIGHT_FILES[0::2]
SINGLE_WEIGHT_FILES = WEIGHT_FILES[1::2]


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise a :class:`CheckpointError` naming ``path`` when a safetensors file is truncated or its
    header is corrupt (read from the header: 8-byte length, JSON, data offsets)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
        if not 0 < length <= size - 8:
            raise CheckpointError(path, f"truncated or corrupt safetensors file ({size} bytes, no complete "
                                        "header); re-download or re-save the checkpoint")
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise CheckpointError(path, f"corrupt safetensors header ({error}); re-download or re-save the "
                                        "checkpoint") from None
    if 8 + length + end > size:
        raise CheckpointError(path, f"truncated safetensors file: {size} bytes, its header describes "
                                    f"{8 + length + end}; re-download or re-save the checkpoint")


def check_torch_file(path: str | os.PathLike) -> None:
    """A :class:`CheckpointError` naming ``path`` when it is empty, or a truncated or corrupt zip archive
    (``torch.save``'s format); torch's legacy format, a pickle stream, passes."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not head:
        raise CheckpointError(path, "empty file (0 bytes), not a checkpoint")
    if head != b"PK":
        if head[:1] != b"\x80":  # torch.save's legacy format is a pickle stream
            raise CheckpointError(path, "not a PyTorch checkpoint (neither a zip archive nor a pickle stream)")
        return
    try:
        zipfile.ZipFile(path).close()
    except zipfile.BadZipFile as error:
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({error}); copy or save it again") from error


def check_file(path: str | os.PathLike) -> None:
    """The integrity check of one weight or state file: a ``.safetensors`` file by its header
    (:func:`check_safetensors`), any other by :func:`check_torch_file`."""
    if Path(path).suffix == ".safetensors":
        check_safetensors(path)
    else:
        check_torch_file(path)


def check_checkpoint_files(directory: str | os.PathLike) -> None:
    """A local checkpoint directory holds weights, and every ``*.safetensors`` file of it is complete
    (see :func:`check_safetensors`)."""
    if not any(Path(directory, name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(directory, f"no weights ({', '.join(SINGLE_WEIGHT_FILES)} or an index of shards)")
    for path in sorted(Path(directory).glob("*.safetensors")):
        check_file(path)


def stored_parameter_names(path: str | os.PathLike, **hub_kwargs) -> set[str]:
    """Parameter names stored in a checkpoint (a directory or hub id), read without loading tensors;
    empty when no weights file is found."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    for name in WEIGHT_FILES:
        resolved = cached_file(str(path), name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **hub_kwargs)
        if resolved is None:
            continue
        if name.endswith(".json"):
            with open(resolved, encoding="utf-8") as handle:
                return set(json.load(handle).get("weight_map", {}))
        if name.endswith(".bin"):
            return set(torch.load(resolved, map_location="meta", weights_only=True, mmap=True))
        with safe_open(resolved, framework="pt") as handle:
            return set(handle.keys())
    return set()


def holds_long_text_positions(path: str | os.PathLike) -> bool:
    """Whether a checkpoint with CLIP's ``model_type`` is an (upstream) FG-CLIP one: its weights hold
    the long-text position table. A hub id is taken as FG-CLIP (plain CLIP is asked for by name)."""
    if not Path(path).is_dir():
        return True
    check_checkpoint_files(path)
    return FGCLIP_MARKER_KEY in stored_parameter_names(path)


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file holding an object (a config, an index of shards); a missing file or invalid JSON is a
    :class:`CheckpointError` naming the file (and line)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"not valid JSON ({error.msg}, column {error.colno})", error.lineno) from None
    except UnicodeDecodeError as error:
        raise CheckpointError(path, f"not a text file ({error.reason})") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, "expected a JSON object")
    return value


def read_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors or ``torch.save`` file of tensors, checked (:func:`check_file`) and read without
    running code (``weights_only``; ``torch.save`` archives memory-mapped); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with open(path, "rb") as handle:
        zip_archive = handle.read(2) == b"PK"  # torch.save's format, which can be memory-mapped
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True, mmap=zip_archive)
    except pickle.UnpicklingError as error:
        raise refused_pickle(path, error) from None
    except Exception as error:  # torch's unpickler raises several types for a foreign or damaged file
        raise CheckpointError(path, f"not a file of tensors ({type(error).__name__}: {error})") from None
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise CheckpointError(path, "expected a dict of tensors")
    return weights


def checkpoint_weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files of a transformers checkpoint directory: the shards its index names, or its single
    weight file; empty when it has none."""
    directory = Path(directory)
    for index in WEIGHT_INDEXES:
        if (directory / index).is_file():
            shards = sorted(set(read_json_object(directory / index).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(directory / index, "field 'weight_map' is missing or empty")
            missing = [name for name in shards if not (directory / name).is_file()]
            if missing:
                raise CheckpointError(directory / index, f"names shard {missing[0]}, which is not in the directory")
            return [directory / name for name in shards]
    return [directory / name for name in SINGLE_WEIGHT_FILES if (directory / name).is_file()][:1]


def read_checkpoint_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers checkpoint directory (:func:`checkpoint_weight_files`)."""
    files = checkpoint_weight_files(directory)
    if not files:
        raise CheckpointError(directory, f"no weights ({', '.join(SINGLE_WEIGHT_FILES)} or an index of shards)")
    weights = {}
    for path in files:
        weights.update(read_tensor_file(path))
    return weights


def refused_pickle(path: str | os.PathLike, error: pickle.UnpicklingError, kind: str = "checkpoint",
                   resave: str | None = None, replace: str = "copy or download it again") -> CheckpointError:
    """A :class:`CheckpointError` in our words for a ``kind`` of file that ``torch.load(weights_only=True)``
    refused: one that pickles a Python object besides tensors and plain values, which only running its
    code could rebuild (``resave``: how to fix it; default: convert it with ``fgclip to-safetensors``), or a
    pickle stream too damaged to be one at all (``replace``: where to get a good one)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        resave = resave or f"if you trust its source, convert it with `fgclip to-safetensors {path} --trust-source`"
        return CheckpointError(path, f"not a safe {kind}: it pickles a Python object ({found.group(1)}) besides "
                                     f"tensors and plain values, which only code could rebuild ({resave})")
    operand = re.search(r"Unsupported operand (\d+)", str(error))
    what = f"unknown pickle operation {operand.group(1)}" if operand else type(error).__name__
    return CheckpointError(path, f"not a {kind} at all: a damaged or foreign pickle stream, {what} ({replace})")


def pickle_to_safetensors(path: str | os.PathLike) -> Path:
    """Convert a ``torch.save`` file of weights into safetensors beside it (``pytorch_model.bin`` ->
    ``model.safetensors``, which transformers then reads first; other names keep their stem) and
    return the new file's path.

    This unpickles the file with ``weights_only=False``, which runs whatever code it holds: only for a
    file whose source you trust. Tensors nested in dicts are written under their dotted key path.
    """
    path = Path(path)
    check_torch_file(path)
    from safetensors.torch import save_file

    loaded = torch.load(path, map_location="cpu", weights_only=False)
    tensors: dict[str, torch.Tensor] = {}
    pending = [("", loaded)]
    while pending:
        prefix, value = pending.pop()
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value.contiguous()
        elif isinstance(value, dict):
            pending += [(f"{prefix}.{key}" if prefix else str(key), item) for key, item in value.items()]
    if not tensors:
        raise CheckpointError(path, "holds no tensors to convert")
    target = path.with_name("model.safetensors") if path.name == "pytorch_model.bin" else path.with_suffix(".safetensors")
    temporary = target.with_name(f".{target.name}.tmp")
    save_file(tensors, str(temporary), metadata={"format": "pt"})
    os.replace(temporary, target)
    return target
