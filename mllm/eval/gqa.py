"""GQA (testdev-balanced): exact match of the short answer.

    python -m mllm.eval.gqa build --gqa-questions testdev_balanced_questions.json --output gqa.jsonl
    python -m mllm.eval.gqa score --gqa-questions testdev_balanced_questions.json --answers answers.jsonl [--lenient]

Rule (LLaVA ``scripts/convert_gqa_for_eval.py`` then GQA's ``eval.py``): the prediction is the
answer with trailing periods removed and lower-cased, nothing else (a space or a newline stays);
it is right if it equals the gold ``answer`` of GQA's questions file. Accuracy is over the
questions with ``isBalanced`` true, each of which must be answered; ``binary`` and ``open``
split it by the structural type (``query`` is open) as ``eval.py`` does. ``--lenient`` also strips
white space around the answer and lower-cases the gold answer.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fgclip.errors import command

from .jsonl import InputError, build_and_score_parsers, answer_texts, print_json, read_json, read_jsonl, write_jsonl

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


def official_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def lenient_normalize(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def read_gqa_questions(path: str | Path, fields: tuple[str, ...]) -> dict[str, dict]:
    """GQA's ``{question_id: {"imageId", "question", "answer", "isBalanced", ...}}``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(path, "expected an object {question_id: question}")
    for question_id, entry in data.items():
        missing = [field for field in fields if not isinstance(entry, dict) or field not in entry]
        if missing:
            raise InputError(path, f"question {question_id!r}: field {missing[0]!r} is missing")
    return data


def build_questions(gqa_questions: str | Path) -> list[dict]:
    """LLaVA's ``llava_gqa_testdev_balanced.jsonl`` layout."""
    data = read_gqa_questions(gqa_questions, ("imageId", "question"))
    return [
        {"question_id": question_id, "image": f"{entry['imageId']}.jpg",
         "text": f"{entry['question']}\n{SHORT_ANSWER_PROMPT}", "category": "default"}
        for question_id, entry in data.items()
    ]


def score(gqa_questions: str | Path, answers_path: str | Path, lenient: bool = False) -> dict[str, object]:
    """``{"rule", "accuracy", "correct", "total", "binary", "open"}`` over GQA's balanced questions."""
    data = read_gqa_questions(gqa_questions, ("answer",))
    balanced = {question_id: entry for question_id, entry in data.items() if entry.get("isBalanced", True)}
    texts = answer_texts(read_jsonl(answers_path), answers_path, balanced, str(gqa_questions), optional_ids=data)
    hits: dict[str, list[bool]] = {"binary": [], "open": []}
    for question_id, entry in balanced.items():
        if lenient:
            right = lenient_normalize(texts[question_id]) == lenient_normalize(entry["answer"])
        else:
            right = official_prediction(texts[question_id]) == entry["answer"]
        structural = entry.get("types", {}).get("structural")
        hits["open" if structural == "query" else "binary"].append(right)
    correct = sum(hits["binary"]) + sum(hits["open"])
    result: dict[str, object] = {
        "rule": "lenient" if lenient else "llava convert_gqa_for_eval.py + gqa eval.py",
        "accuracy": correct / len(balanced) if balanced else 0.0, "correct": correct, "total": len(balanced),
    }
    if all("types" in entry for entry in balanced.values()):  # eval.py: open = structural type "query"
        result.update({kind: sum(right) / len(right) if right else 0.0 for kind, right in hits.items()})
    return result


@command
def main(argv: list[str] | None = None) -> int:
    parser, build, scoring = build_and_score_parsers(__doc__)
    build.add_argument("--gqa-questions", required=True)
    build.add_argument("--output", required=True)
    scoring.add_argument("--gqa-questions", required=True, help="GQA's testdev_balanced_questions.json (gold)")
    scoring.add_argument("--answers", required=True)
    scoring.add_argument("--lenient", action="store_true", help="strip white space, lower-case the gold answer too")
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.gqa_questions), args.output)
        return 0
    print_json(score(args.gqa_questions, args.answers, args.lenient))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
