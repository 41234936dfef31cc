"""POPE: object hallucination as yes/no questions, scored per category (random, popular, adversarial).

    python -m mllm.eval.pope build --annotation-dir pope/coco --output pope.jsonl
    python -m mllm.eval.pope score --questions llava_pope_test.jsonl --annotation-dir pope/coco \\
        --answers answers.jsonl [--lenient]

Rule (LLaVA ``llava/eval/eval_pope.py``, the same as POPE's own): keep the answer up to its
first ".", remove commas, split on single spaces; the answer is "no" if a word is exactly
``No``, ``not`` or ``no``, else "yes" (so ``NO``, ``Not`` and ``no\\nthere`` read as "yes").
``--lenient`` splits on any white space, strips punctuation from the words and ignores case.

Labels come from POPE's ``coco_pope_{category}.json`` files (JSON lines with ``label``); like
the official script, the k-th label of a file belongs to the k-th question of its category
in the question file (checked: same image, question text). Metrics per category, "yes" the
positive class; a denominator of 0 gives 0 (the official script stops with an error there).
"""
from __future__ import annotations

import string
import sys
from pathlib import Path

from fgclip.errors import command

from .gqa import SHORT_ANSWER_PROMPT
from .jsonl import InputError, build_and_score_parsers, Numbered, answer_texts, print_json, read_jsonl, write_jsonl

LABELS = ("yes", "no")
OFFICIAL_NO_WORDS = {"No", "not", "no"}
LABEL_FILE_PREFIX, LABEL_FILE_SUFFIX = "coco_pope_", ".json"
LLAVA_CATEGORY_ORDER = ("adversarial", "random", "popular")
CATEGORY_ID_BLOCK = 10_000_000


def answer_label(text: str, lenient: bool = False) -> str:
    first_sentence = text.split(".")[0]
    if lenient:
        words = {word.strip(string.punctuation).lower() for word in first_sentence.split()}
        return "no" if words & {"no", "not"} else "yes"
    return "no" if OFFICIAL_NO_WORDS & set(first_sentence.replace(",", "").split(" ")) else "yes"


def read_label_files(annotation_dir: str | Path) -> dict[str, tuple[Path, list[Numbered]]]:
    """Category -> (file, labelled questions) from every ``coco_pope_{category}.json`` in the folder."""
    paths = sorted(Path(annotation_dir).glob(f"{LABEL_FILE_PREFIX}*{LABEL_FILE_SUFFIX}"))
    if not paths:
        raise InputError(annotation_dir, f"no {LABEL_FILE_PREFIX}<category>{LABEL_FILE_SUFFIX} files")
    label_sets = {}
    for path in paths:
        records = read_jsonl(path, required=("image", "text", "label"))
        for line, record in records:
            if record["label"] not in LABELS:
                raise InputError(path, f"label must be yes or no, got {record['label']!r}", line)
        label_sets[path.name[len(LABEL_FILE_PREFIX) : -len(LABEL_FILE_SUFFIX)]] = (path, records)
    return label_sets


def build_questions(annotation_dir: str | Path) -> list[dict]:
    """LLaVA's ``llava_pope_test.jsonl``: categories in LLaVA's order (then any others), the k-th
    question of the c-th category numbered ``c * 10,000,000 + k``, with its ``label`` added."""
    label_sets = read_label_files(annotation_dir)
    others = sorted(set(label_sets) - set(LLAVA_CATEGORY_ORDER))
    categories = [category for category in LLAVA_CATEGORY_ORDER if category in label_sets] + others
    records = []
    for block, category in enumerate(categories):
        for position, (_, question) in enumerate(label_sets[category][1], start=1):
            records.append({
                "question_id": block * CATEGORY_ID_BLOCK + position,
                "image": question["image"],
                "text": f"{question['text']}\n{SHORT_ANSWER_PROMPT}",
                "category": category,
                "label": question["label"],
            })
    return records


def labels_of_questions(questions: list[Numbered], questions_path, annotation_dir) -> dict[str, str]:
    """Question id -> label: per category, the k-th question takes the k-th label of its file."""
    by_category: dict[str, list[Numbered]] = {}
    for line, question in questions:
        by_category.setdefault(str(question.get("category")), []).append((line, question))
    label_sets = read_label_files(annotation_dir)
    labels = {}
    for category, members in by_category.items():
        if category not in label_sets:
            raise InputError(questions_path, f"category {category!r} has no {LABEL_FILE_PREFIX}{category}.json "
                             f"in {annotation_dir}", members[0][0])
        label_path, labelled = label_sets[category]
        if len(labelled) != len(members):
            raise InputError(label_path, f"{len(labelled)} labels for {len(members)} questions of category "
                             f"{category!r} in {questions_path}")
        for (line, question), (label_line, label) in zip(members, labelled):
            if question.get("image") != label["image"] or not str(question.get("text")).startswith(label["text"]):
                raise InputError(label_path, f"label of {label['image']} {label['text']!r} does not match "
                                 f"{questions_path}:{line} ({question.get('image')} {question.get('text')!r})",
                                 label_line)
            labels[str(question["question_id"])] = label["label"]
    return labels


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
        "yes_ratio": (tp + fp) / len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "total": len(pairs),
    }


def score(
    questions_path: str | Path, answers_path: str | Path, annotation_dir: str | Path | None = None,
    lenient: bool = False,
) -> dict[str, object]:
    """Metrics per category and their unweighted ``mean``; labels from ``annotation_dir`` or the questions."""
    questions = read_jsonl(questions_path)
    if annotation_dir is not None:
        labels = labels_of_questions(questions, questions_path, annotation_dir)
    else:
        for line, question in questions:
            if question.get("label") not in LABELS:
                raise InputError(questions_path, "no yes/no 'label' (give --annotation-dir)", line)
        labels = {str(question["question_id"]): question["label"] for _, question in questions}
    texts = answer_texts(read_jsonl(answers_path), answers_path, labels, str(questions_path))
    splits: dict[str, tuple[list[str], list[str]]] = {}
    for _, question in questions:
        question_id = str(question["question_id"])
        predictions, truth = splits.setdefault(str(question.get("category", "all")), ([], []))
        predictions.append(answer_label(texts[question_id], lenient))
        truth.append(labels[question_id])
    results: dict[str, object] = {"rule": "lenient" if lenient else "llava eval_pope.py"}
    per_category = {category: binary_metrics(*values) for category, values in splits.items()}
    results.update(per_category)
    names = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    results["mean"] = {name: sum(r[name] for r in per_category.values()) / len(per_category) for name in names}
    return results


@command
def main(argv: list[str] | None = None) -> int:
    parser, build, scoring = build_and_score_parsers(__doc__, "question file from POPE's coco_pope_*.json label files")
    build.add_argument("--annotation-dir", required=True)
    build.add_argument("--output", required=True)
    scoring.add_argument("--questions", required=True, help="ours (with labels) or llava_pope_test.jsonl")
    scoring.add_argument("--answers", required=True)
    scoring.add_argument("--annotation-dir", help="folder of coco_pope_*.json (needed for LLaVA's question file)")
    scoring.add_argument("--lenient", action="store_true", help="case-insensitive words, any white space")
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.annotation_dir), args.output)
        return 0
    print_json(score(args.questions, args.answers, args.annotation_dir, args.lenient))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
