"""The detection extra: mmcv with its compiled ops (``mmcv._ext``) and mmdet.

``make demo`` does not build mmcv; ``make setup-detection`` does (``make test`` runs it first).
Importing :mod:`detection` checks for them first, so a detection tool started without them says
in one line what to run instead of showing an ``ImportError`` traceback.
"""
from __future__ import annotations

import importlib

from fgclip.errors import ConfigError

SETUP_HINT = "run `make setup-detection` (builds mmcv's compiled ops once per torch version: 10 minutes or more)"
REQUIRED_MODULES = ("mmcv", "mmcv._ext", "mmdet")


class DetectionExtraMissing(ConfigError):
    """mmcv, its compiled ops or mmdet cannot be imported."""


def require_detection_extra() -> None:
    """Raise :class:`DetectionExtraMissing` naming the first module of the extra that does not import."""
    for module in REQUIRED_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise DetectionExtraMissing(module, f"cannot be imported ({reason}); {SETUP_HINT}") from error
