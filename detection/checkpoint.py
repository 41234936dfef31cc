"""Checkpoints that load under torch's weights-only unpickler.

torch >= 2.6 loads with ``weights_only=True`` by default. mmengine 0.10.7 stores its
``MessageHub`` log buffers (``HistoryBuffer`` objects, which pickle references to their
methods through ``getattr``) in every checkpoint, so ``load_checkpoint`` and ``resume``
fail on them. :class:`WeightsOnlyCheckpointHook` stores those buffers as plain lists and
numbers and rebuilds them after loading; the weights-only check itself stays on.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator

import numpy as np
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from fgclip.checkpoint_files import check_file, refused_pickle
from fgclip.errors import CheckpointError
from mmdet.registry import HOOKS

BUFFER_TAG = "__history_buffer__"
RESAVE_HINT = ("if you trust its source, load it with torch.load(weights_only=False) and torch.save its tensors and "
               "plain values only, e.g. {'state_dict': state_dict, 'meta': {}}")


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """A :class:`CheckpointError` naming ``path`` when it is missing, empty, or a truncated or
    corrupt checkpoint (:func:`fgclip.checkpoint_files.check_file`), found before the model is built."""
    if not os.path.isfile(path):
        raise CheckpointError(path, "checkpoint file not found (a .pth written by tools/train_det.py)")
    check_file(path)


@contextlib.contextmanager
def loading_checkpoint(path: str | os.PathLike | None) -> Iterator[None]:
    """Around code that loads the checkpoint ``path`` (``None``: none is loaded): torch's weights-only
    loader refusing it is a :class:`CheckpointError` naming it (:func:`~fgclip.checkpoint_files.refused_pickle`)."""
    try:
        yield
    except pickle.UnpicklingError as error:
        if path is None:
            raise
        raise refused_pickle(path, error, "checkpoint", RESAVE_HINT,
                             "copy it again, or give a .pth written by tools/train_det.py") from error


def plain(value):
    """Numpy scalars and arrays inside dicts / lists / tuples -> Python numbers and lists."""
    if isinstance(value, dict):
        return type(value)((key, plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Make saved checkpoints loadable with ``torch.load(weights_only=True)``.

    Before saving, each ``HistoryBuffer`` in ``checkpoint["message_hub"]["log_scalars"]``
    becomes ``{BUFFER_TAG: True, "log_history": [...], "count_history": [...], "max_length": n}``
    and numpy values in the message hub and ``meta`` become plain Python values. After
    loading, the buffers are rebuilt, so ``resume`` restores the logged history.
    """

    priority = "LOWEST"  # save: after every other hook has added its state

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        message_hub = checkpoint.get("message_hub")
        if message_hub is not None:
            scalars = message_hub.get("log_scalars", {})
            for key, buffer in list(scalars.items()):
                if isinstance(buffer, HistoryBuffer):
                    log_history, count_history = buffer.data
                    scalars[key] = {
                        BUFFER_TAG: True,
                        "log_history": log_history.tolist(),
                        "count_history": count_history.tolist(),
                        "max_length": buffer.max_length,
                    }
            checkpoint["message_hub"] = plain(message_hub)
        if "meta" in checkpoint:
            checkpoint["meta"] = plain(checkpoint["meta"])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
        for key, value in list(scalars.items()):
            if isinstance(value, dict) and value.get(BUFFER_TAG):
                scalars[key] = HistoryBuffer(value["log_history"], value["count_history"], value["max_length"])
