"""GQA (testdev-balanced): exact match of the normalised short answer.

    python -m mllm.eval.gqa build --gqa-questions testdev_balanced_questions.json --output gqa.jsonl
    python -m mllm.eval.gqa score --questions gqa.jsonl --answers answers.jsonl

Normalisation of both prediction and ground truth: surrounding space removed, trailing
periods removed, lower case (what LLaVA applies before GQA's exact-match evaluation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .jsonl import pair_answers, read_jsonl, write_jsonl

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


def normalize(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def build_questions(gqa_questions: str | Path) -> list[dict]:
    """GQA's ``{question_id: {"imageId", "question", "answer", ...}}`` -> question records."""
    data = json.loads(Path(gqa_questions).read_text(encoding="utf-8"))
    records = []
    for question_id, entry in data.items():
        for field in ("imageId", "question", "answer"):
            if field not in entry:
                raise ValueError(f"{gqa_questions}: question {question_id!r}: field {field!r} is missing")
        records.append({
            "question_id": question_id,
            "image": f"{entry['imageId']}.jpg",
            "text": f"{entry['question']}\n{SHORT_ANSWER_PROMPT}",
            "answer": entry["answer"],
        })
    return records


def score(questions: list[dict], answers: list[dict]) -> dict[str, float]:
    """``{"accuracy", "correct", "total"}`` over all questions (each needs an ``answer``)."""
    pairs = pair_answers(questions, answers)
    correct = sum(normalize(text) == normalize(question["answer"]) for question, text in pairs)
    return {"accuracy": correct / len(pairs), "correct": correct, "total": len(pairs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("--gqa-questions", required=True)
    build.add_argument("--output", required=True)
    scoring = commands.add_parser("score")
    scoring.add_argument("--questions", required=True)
    scoring.add_argument("--answers", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.gqa_questions), args.output)
    else:
        print(json.dumps(score(read_jsonl(args.questions), read_jsonl(args.answers)), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
