"""The project's error types, and the one line every command prints for them.

A user's bad input (a data file, a recipe, a checkpoint, an image, an argument) raises one of
:class:`DataError`, :class:`ConfigError`, :class:`CheckpointError`, :class:`ImageError`, whose
message starts with the file (and line) at fault. Commands run through :func:`run_command`, which
prints such an error, or a failed write, as::

    error: <file>[:<line>]: <what is wrong and how to fix it>

and exits with status 2. ``--debug`` on the command line or ``FGCLIP_DEBUG=1`` shows the
traceback instead. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import re
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import IO, Any

EXIT_USER_ERROR = 2
ALLOW_OUTSIDE_HINT = "give --allow-outside-root to read it anyway"
DEBUG_FLAG = "--debug"
STDOUT = "<stdout>"
WORKER_TRACEBACK = "\nOriginal Traceback"  # torch's re-raise of an error from a DataLoader worker


class UserError(ValueError):
    """Bad input from the user; the message names the file (and line) at fault.

    Built from ``(message)`` or ``(path, what, line=None)``, which reads ``path[:line]: what``.
    A ``ValueError``, so callers that caught the older ``ValueError`` keep working.
    """

    def __init__(self, path_or_message: Any, what: str | None = None, line: int | None = None):
        if what is None:
            super().__init__(str(path_or_message))
        else:
            where = str(path_or_message) if line is None else f"{path_or_message}:{line}"
            super().__init__(f"{where}: {what}")


class DataError(UserError):
    """A data file or record (FineHARD, benchmark, LLaVA conversations, answers) that cannot be used."""


class ConfigError(UserError):
    """A recipe or option that cannot be used (YAML syntax, unknown key, invalid value)."""


class CheckpointError(UserError):
    """A model checkpoint that cannot be found or read."""


class ImageError(DataError):
    """An image file that is missing, truncated, empty, not an image or above PIL's pixel limit."""


def outside_root_reason(relative: str) -> str | None:
    """Why a path written in a data file may not be read under its root: it is absolute or climbs out
    of the root with ``..`` (``None`` when it stays inside). Readers refuse such paths unless the
    user passes ``--allow-outside-root``."""
    path = PurePosixPath(relative.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(relative).drive:
        return f"path {relative!r} is absolute; data paths are relative to their root ({ALLOW_OUTSIDE_HINT})"
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return f"path {relative!r} leaves its root with '..' ({ALLOW_OUTSIDE_HINT})"
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around the writing (and closing) of an output file: an ``OSError`` (full disk, no permission)
    leaves it naming ``path``, so the command reports ``error: <path>: <reason>``."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """A file handle for writing the output file ``path``: it writes a temporary file in the same folder,
    renamed onto ``path`` once complete, so that a failed write (a full disk, a file-size limit, an
    exception while writing) leaves no partial file at ``path`` and an earlier version in place; an
    ``OSError`` names ``path``. A path that exists and is not a regular file (``/dev/full``, a pipe)
    is written in place."""
    path = os.fspath(path)
    encoding = None if "b" in mode else encoding
    if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe: written in place, never replaced
        with writing(path), open(path, mode, encoding=encoding) as handle:
            yield handle
        return
    temporary = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, mode, encoding=encoding) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError) and error.filename in (None, temporary):
            error.filename, error.filename2 = path, None  # the error names the output, not its temporary file
        raise


def write_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def check_output_dir(path: str | os.PathLike, name: str, given: str | os.PathLike | None = None) -> None:
    """Before any work: ``path`` is, or can be made, a folder to write outputs in. A file in its place or
    in the place of one of its parents, or a folder that cannot be written, is a :class:`ConfigError`
    naming ``name`` (the flag or recipe key) and ``given`` (what the user gave, default ``path``)."""
    given = path if given is None else given
    path = os.fspath(path) or "."
    for place in (path, *map(os.fspath, PurePosixPath(path).parents)):
        if not os.path.exists(place):
            continue
        if not os.path.isdir(place):
            what = "is a file" if place == os.fspath(given) else f"{place} is a file"
            raise ConfigError(f"{name} {given}: {what}, not a directory (give a folder for the outputs)")
        if not os.access(place, os.W_OK | os.X_OK):
            raise ConfigError(f"{name} {given}: {place} is not writable (give a folder you can write to)")
        return


def check_output_file(path: str | os.PathLike, name: str) -> None:
    """Before any work: ``path`` can be written as a file (it is not a folder, and its folder is or can
    be made); a :class:`ConfigError` naming ``name`` and ``path`` otherwise."""
    if os.path.isdir(path):
        raise ConfigError(f"{name} {path}: is a directory, not a file (give a file name)")
    check_output_dir(os.path.dirname(os.fspath(path)), name, given=path)


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line, ``error: <flag>: <what> (see <prog>
    --help)``, with exit status 2, like every other input error (argparse prints the whole usage first).
    Its sub-command parsers are of the same class."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether tracebacks are wanted: ``--debug`` in ``argv`` or ``FGCLIP_DEBUG=1``."""
    return DEBUG_FLAG in argv or os.environ.get("FGCLIP_DEBUG", "") not in ("", "0")


def describe(error: BaseException) -> str | None:
    """The one-line report of a user error or a failed file operation, ``None`` for anything else."""
    if isinstance(error, UserError):
        text = str(error)
        if WORKER_TRACEBACK in text:  # re-raised by a DataLoader worker: the original message is last
            text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
        return f"error: {text}"
    if isinstance(error, OSError) and error.filename is not None:
        return f"error: {error.filename}: {error.strerror or error}"
    return None


def run_command(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (``argv`` without ``--debug``); a user error prints one line and gives status 2.

    Standard output is flushed inside, so a failed write to it (a full disk) is reported too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        status = main([argument for argument in argv if argument != DEBUG_FLAG])
        with writing(STDOUT):
            sys.stdout.flush()
    except (UserError, OSError) as error:
        message = describe(error)
        if getattr(error, "filename", None) == STDOUT:  # the interpreter's flush at exit would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if debug or message is None:
            raise
        close_progress_bars()
        print(message, file=sys.stderr)
        return EXIT_USER_ERROR
    return status if isinstance(status, int) else 0


def print_output(text: str) -> None:
    """Print a command's result to standard output; a failed write (a full disk) names ``<stdout>``."""
    with writing(STDOUT):
        print(text)
        sys.stdout.flush()


def close_progress_bars() -> None:
    """End open tqdm bars (a training or evaluation loop stopped by the error) so that the error
    starts its own line."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def command(main: Callable[[list[str]], Any]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a ``main(argv)`` so that it runs through :func:`run_command`."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        return run_command(main, argv)

    return wrapped
