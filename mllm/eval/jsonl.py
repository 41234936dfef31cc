"""Question and answer files (JSON lines, LLaVA's layouts), pairing answers with questions, and
input errors that name the file and line.

LLaVA's answer files hold one ``{"question_id", "prompt", "text", "answer_id", "model_id",
"metadata"}`` per line (MMBench's also ``round_id``, ``options``, ``option_char``).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fgclip.errors import CommandParser, DataError, atomic_output, print_output

Numbered = tuple[int, dict]  # (line number, record)


def build_and_score_parsers(description: str, build_help: str | None = None):
    """The command line every benchmark module has: ``build`` (its question file) and ``score`` (answers
    against the gold); returns the parser and the two sub-parsers to add their options to."""
    parser = CommandParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    return parser, commands.add_parser("build", help=build_help), commands.add_parser("score")


class InputError(DataError):
    """A question, label or answer file that cannot be scored: ``InputError(path, what, line=None)``
    reads ``path[:line]: what`` (see :class:`fgclip.errors.UserError`)."""


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ("question_id",)) -> list[Numbered]:
    """``(line, record)`` for each non-empty line; every record needs the ``required`` fields."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(path, f"invalid JSON: {error}", line_number) from error
        if not isinstance(record, dict):
            raise InputError(path, "expected a JSON object", line_number)
        missing = [field for field in required if field not in record]
        if missing:
            raise InputError(path, f"field {missing[0]!r} is missing", line_number)
        records.append((line_number, record))
    return records


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(path, f"invalid JSON: {error}", error.lineno) from error


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def answer_texts(
    answers: list[Numbered],
    answers_path: str | os.PathLike,
    question_ids: Iterable[str],
    questions_name: str,
    key: Callable[[dict], str] = lambda answer: str(answer["question_id"]),
    optional_ids: Iterable[str] = (),
) -> dict[str, str]:
    """Question id -> answer ``text``: each question answered once (``optional_ids`` at most once).

    Ids are compared as strings (LLaVA writes POPE's and MMBench's as integers, GQA's as strings).
    """
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    wanted = list(question_ids)
    known = set(wanted) | set(optional_ids)
    for line, answer in answers:
        question_id = key(answer)
        if question_id in texts:
            twice = f"question {question_id} is answered twice (also on line {first_line[question_id]})"
            raise InputError(answers_path, twice, line)
        if question_id not in known:
            raise InputError(answers_path, f"question {question_id} is not in {questions_name}", line)
        if not isinstance(answer.get("text"), str):
            raise InputError(answers_path, "field 'text' must be a string", line)
        texts[question_id] = answer["text"]
        first_line[question_id] = line
    missing = [question_id for question_id in wanted if question_id not in texts]
    if missing:
        unanswered = f"{len(missing)} questions of {questions_name} are unanswered, e.g. {missing[:3]}"
        raise InputError(answers_path, unanswered)
    return texts


def print_json(result: dict) -> None:
    print_output(json.dumps(result, indent=2))
