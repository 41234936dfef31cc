"""JSON-lines files of questions and answers, and pairing answers with their questions."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """One JSON object per non-empty line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {line_number}: invalid JSON: {error}") from error
        if not isinstance(record, dict) or "question_id" not in record:
            raise ValueError(f"{path}: line {line_number}: expected an object with a 'question_id'")
        records.append(record)
    return records


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def pair_answers(questions: list[dict], answers: list[dict], answers_name: str = "answers") -> list[tuple[dict, str]]:
    """``(question, answer text)`` in question order.

    Raises ``ValueError`` for duplicate question ids, answers to unknown questions, answers
    without a string ``text`` and questions left unanswered (naming the first few ids).
    """
    by_id: dict[str, dict] = {}
    for answer in answers:
        key = str(answer["question_id"])
        if key in by_id:
            raise ValueError(f"{answers_name}: question_id {key!r} is answered twice")
        if not isinstance(answer.get("text"), str):
            raise ValueError(f"{answers_name}: question_id {key!r}: field 'text' must be a string")
        by_id[key] = answer
    question_ids = [str(question["question_id"]) for question in questions]
    if len(set(question_ids)) != len(question_ids):
        raise ValueError("questions: duplicate question_id")
    unknown = sorted(set(by_id) - set(question_ids))
    if unknown:
        raise ValueError(f"{answers_name}: {len(unknown)} answers to unknown questions, e.g. {unknown[:3]}")
    missing = [key for key in question_ids if key not in by_id]
    if missing:
        raise ValueError(f"{answers_name}: {len(missing)} questions unanswered, e.g. {missing[:3]}")
    return [(question, by_id[key]["text"]) for question, key in zip(questions, question_ids)]
