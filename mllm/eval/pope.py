"""POPE: object hallucination as yes/no questions, scored per split (random, popular, adversarial).

    python -m mllm.eval.pope build --split random=coco_pope_random.json \\
        --split popular=coco_pope_popular.json --split adversarial=coco_pope_adversarial.json --output pope.jsonl
    python -m mllm.eval.pope score --questions pope.jsonl --answers answers.jsonl

An answer counts as "no" when its first sentence (the text before the first ".") contains
the word "no" or "not" (case-insensitive, commas removed), and as "yes" otherwise. "yes" is
the positive class: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic
mean, yes-ratio = predicted yes / total (0 when a denominator is 0).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .gqa import SHORT_ANSWER_PROMPT
from .jsonl import pair_answers, read_jsonl, write_jsonl

LABELS = ("yes", "no")
NEGATION_WORDS = {"no", "not"}


def answer_label(text: str) -> str:
    first_sentence = text.split(".", 1)[0].replace(",", "")
    return "no" if NEGATION_WORDS & set(first_sentence.lower().split()) else "yes"


def build_questions(split_files: dict[str, str | Path]) -> list[dict]:
    """POPE's JSON-lines files ``{"question_id", "image", "text", "label"}``, one per split."""
    records = []
    for split, path in split_files.items():
        for question in read_jsonl(path):
            if question.get("label") not in LABELS:
                raise ValueError(f"{path}: question_id {question['question_id']!r}: label must be yes or no")
            records.append({
                "question_id": f"{split}-{question['question_id']}",
                "image": question["image"],
                "text": f"{question['text']}\n{SHORT_ANSWER_PROMPT}",
                "label": question["label"],
                "category": split,
            })
    return records


def binary_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": (tp + fp) / len(pairs), "total": len(pairs),
    }


def score(questions: list[dict], answers: list[dict]) -> dict[str, dict[str, float]]:
    """Metrics per split (``category``) and their unweighted ``mean`` over splits."""
    splits: dict[str, tuple[list[str], list[str]]] = {}
    for question, text in pair_answers(questions, answers):
        predictions, labels = splits.setdefault(question.get("category", "all"), ([], []))
        predictions.append(answer_label(text))
        labels.append(question["label"])
    results = {split: binary_metrics(*values) for split, values in splits.items()}
    metric_names = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    results["mean"] = {name: sum(r[name] for r in results.values()) / len(results) for name in metric_names}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("--split", action="append", required=True, metavar="NAME=FILE")
    build.add_argument("--output", required=True)
    scoring = commands.add_parser("score")
    scoring.add_argument("--questions", required=True)
    scoring.add_argument("--answers", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        split_files = {}
        for item in args.split:
            name, separator, path = item.partition("=")
            if not separator:
                parser.error(f"--split takes NAME=FILE, got {item!r}")
            split_files[name] = path
        write_jsonl(build_questions(split_files), args.output)
    else:
        print(json.dumps(score(read_jsonl(args.questions), read_jsonl(args.answers)), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
