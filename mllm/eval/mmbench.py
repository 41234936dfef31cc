"""MMBench multiple choice with circular evaluation.

    python -m mllm.eval.mmbench build --tsv mmbench_dev_20230712.tsv --image-dir mmbench_images --output mmbench.jsonl
    python -m mllm.eval.mmbench score --questions mmbench.jsonl --answers answers.jsonl

Circular evaluation: a question with ``n`` options is asked ``n`` times, the option texts
rotated by one letter each time (rotation ``k`` puts original option ``(i + k) mod n`` under
letter ``i``); it counts as solved only if every rotation is answered correctly. The score
also reports the accuracy of rotation 0 alone (``vanilla``).

Letter extraction from an answer, first rule that applies:

1. the answer is a letter, alone or followed by ``.``, ``)`` or ``:`` (``"B"``, ``"(B) cat"``, ``"B. cat"``);
2. it says ``answer/option/choice [is] X``;
3. exactly one option text occurs in it (case-insensitive).

Otherwise no letter is extracted and the rotation counts as wrong.
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

from .jsonl import pair_answers, read_jsonl, write_jsonl

LETTERS = "ABCDEFGHI"
OPTION_PROMPT = "Answer with the option's letter from the given choices directly."
LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:$|[.):]|\)?\s*$)")
NAMED_LETTER = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is\s*)?:?\s*\(?([A-Z])\b")


def _is_blank(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() == "nan"


def extract_letter(text: str, options: dict[str, str]) -> str | None:
    """The option letter an answer picks (rules in the module docstring), or ``None``."""
    text = text.strip()
    match = LEADING_LETTER.match(text)
    if match and match.group(1) in options:
        return match.group(1)
    match = NAMED_LETTER.search(text)
    if match and match.group(1) in options:
        return match.group(1)
    lowered = text.lower()
    named = [letter for letter, option in options.items() if option.strip() and option.strip().lower() in lowered]
    return named[0] if len(named) == 1 else None


def question_text(question: str, hint: str | None, options: dict[str, str]) -> str:
    lines = ([hint.strip()] if not _is_blank(hint) else []) + [question.strip()]
    lines += [f"{letter}. {option}" for letter, option in options.items()]
    return "\n".join(lines + [OPTION_PROMPT])


def build_questions(tsv: str | Path, image_dir: str | Path, circular: bool = True) -> list[dict]:
    """MMBench TSV (``index, question, hint, A.., answer, category, image`` base64) -> questions.

    Images are written to ``image_dir`` as ``{index}.png``; each question holds the rotated
    ``options``, the correct ``answer`` letter for that rotation, its ``group`` (the row index)
    and ``rotation``.
    """
    csv.field_size_limit(sys.maxsize)
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with open(tsv, encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.DictReader(handle, delimiter="\t"), start=2):
            where = f"{tsv}: line {line_number} (index {row.get('index')!r})"
            for field in ("index", "question", "image"):
                if _is_blank(row.get(field)):
                    raise ValueError(f"{where}: field {field!r} is missing")
            options = [row[letter] for letter in LETTERS if not _is_blank(row.get(letter))]
            if len(options) < 2:
                raise ValueError(f"{where}: fewer than two options")
            answer = (row.get("answer") or "").strip()
            if answer and answer not in LETTERS[: len(options)]:
                raise ValueError(f"{where}: answer {answer!r} is not one of the {len(options)} option letters")
            image_name = f"{row['index']}.png"
            try:
                Image.open(io.BytesIO(base64.b64decode(row["image"]))).convert("RGB").save(image_dir / image_name)
            except (OSError, ValueError) as error:
                raise ValueError(f"{where}: field 'image' is not a base64 image: {error}") from error
            for rotation in range(len(options) if circular else 1):
                rotated = {LETTERS[i]: options[(i + rotation) % len(options)] for i in range(len(options))}
                records.append({
                    "question_id": f"{row['index']}-{rotation}",
                    "image": image_name,
                    "text": question_text(row["question"], row.get("hint"), rotated),
                    "options": rotated,
                    "answer": LETTERS[(LETTERS.index(answer) - rotation) % len(options)] if answer else None,
                    "group": str(row["index"]),
                    "rotation": rotation,
                    "category": row.get("category") or "",
                })
    return records


def score(questions: list[dict], answers: list[dict]) -> dict[str, object]:
    """Circular accuracy (all rotations right), per category, and rotation-0 ``vanilla`` accuracy."""
    groups: dict[str, list[bool]] = defaultdict(list)
    categories: dict[str, str] = {}
    vanilla = []
    for question, text in pair_answers(questions, answers):
        if question.get("answer") is None:
            raise ValueError(f"question_id {question['question_id']!r}: no ground-truth answer (test split?)")
        right = extract_letter(text, question["options"]) == question["answer"]
        groups[question["group"]].append(right)
        categories[question["group"]] = question.get("category", "")
        if question.get("rotation", 0) == 0:
            vanilla.append(right)
    solved = {group: all(results) for group, results in groups.items()}
    per_category: dict[str, list[bool]] = defaultdict(list)
    for group, ok in solved.items():
        per_category[categories[group]].append(ok)
    return {
        "circular_accuracy": sum(solved.values()) / len(solved),
        "vanilla_accuracy": sum(vanilla) / len(vanilla) if vanilla else 0.0,
        "questions": len(solved),
        "per_category": {name: sum(oks) / len(oks) for name, oks in sorted(per_category.items())},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("--tsv", required=True)
    build.add_argument("--image-dir", required=True)
    build.add_argument("--output", required=True)
    build.add_argument("--no-circular", action="store_true", help="ask each question once")
    scoring = commands.add_parser("score")
    scoring.add_argument("--questions", required=True)
    scoring.add_argument("--answers", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.tsv, args.image_dir, circular=not args.no_circular), args.output)
    else:
        print(json.dumps(score(read_jsonl(args.questions), read_jsonl(args.answers)), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
