"""Detection configs read for the tools, with errors that name the config file.

A config is Python that mmengine executes; its syntax errors, exceptions and missing ``_base_``
files are reported as ``<config>[:<line>]: ...``. Checks made while the Runner builds the model
and datasets raise :class:`~fgclip.errors.ConfigError` naming the config field;
:func:`naming_config` puts the config file in front of them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mmengine.config import Config

from fgclip.errors import ConfigError

from .extra import DetectionExtraMissing


def load_config(path: str, options: dict | None = None) -> Config:
    """``Config.fromfile(path)`` with ``options`` (``--cfg-options``) merged in."""
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
