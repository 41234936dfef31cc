"""MMBench multiple choice: VLMEvalKit's rule-based matching with circular evaluation.

    python -m mllm.eval.mmbench build --tsv mmbench_dev_20230712.tsv --image-dir mmbench_images --output mmbench.jsonl
    python -m mllm.eval.mmbench score --tsv mmbench_dev_20230712.tsv --answers answers.jsonl \\
        [--submission answers_upload/model.xlsx]

Circular evaluation. In official TSVs the rows whose index is >= 1,000,000 ARE the circular
copies (options rotated) of row ``index % 1,000,000``: each row is asked once and never rotated
again. A TSV without such rows is expanded here: a question with ``n`` options is asked ``n``
times, rotation ``k`` putting option ``(i + k) mod n`` under letter ``i`` (LLaVA's
``model_vqa_mmbench.py --all-rounds``), as question ``index + k * 1,000,000``; LLaVA's answers
give the rotation as ``round_id``. A question counts as solved only if all its rows are right;
accuracy is over the questions (rows with index < 1,000,000), also per ``category`` and
``l2-category``, and with a ``split`` column for each split as VLMEvalKit's ``report_acc`` breaks
it down (a category without questions in a split is NaN there, printed as JSON's ``NaN``).
``--no-circular`` (a TSV without copies only) asks each row once.

Matching (VLMEvalKit ``can_infer``, exact matching, no LLM judge), first rule that gives a letter:

1. the answer with ``.()[],:;!*#{}`` replaced by spaces, split into words, names exactly one
   option letter as a word, among its last four words (``B``, ``(B)``, ``**B**``, ``[B]``,
   ``B. cat``, ``I pick B``); with no letter but a word ``Z``, or one of VLMEvalKit's refusal
   phrases, the pick is ``Z`` (wrong); an answer containing "Failed to obtain answer via API"
   skips this rule;
2. "[correct ]answer is X" (any case, ``X`` in A-D, optionally in ``**``) for an option ``X``;
3. exactly one option's text occurs in the lower-cased answer, unless the answer is longer than
   twice the options' texts together.

Otherwise the row is wrong. ``--submission`` writes the .xlsx of LLaVA's
``scripts/convert_mmbench_for_submission.py``: the TSV without ``hint``, ``category``,
``source``, ``image``, ``comment``, ``l2-category``, with ``prediction`` as 7th column, the
text of the last answer whose ``question_id`` is the row's index.
"""
from __future__ import annotations

import base64
import binascii
import csv
import math
import re
import string
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fgclip.errors import command
from fgclip.image_io import load_image

from .jsonl import InputError, build_and_score_parsers, Numbered, answer_texts, print_json, read_jsonl, write_jsonl
from .xlsx import Cell, write_xlsx

CIRCULAR_OFFSET = 1_000_000
PROMPT_LETTERS = "ABCD"  # LLaVA asks options A-D, up to the first empty one
OPTION_PROMPT = "Answer with the option's letter from the given choices directly."
PANDAS_MISSING = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                  "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}  # pandas.read_table's NaN
SUBMISSION_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")
SUBMISSION_PREDICTION_COLUMN = 6
API_FAILURE = "Failed to obtain answer via API"
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
LETTER_SEPARATORS = str.maketrans({character: " " for character in ".()[],:;!*#{}"})
ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)


def is_missing(value: str | None) -> bool:
    """A TSV cell that pandas reads as NaN (or LLaVA's ``is_none`` treats as none)."""
    return value is None or value in PANDAS_MISSING or value.lower() in {"nan", "none"}


def letter_from_letters(answer: str, choices: dict[str, str]) -> str | None:
    if API_FAILURE in answer:
        return None
    if any(phrase in answer for phrase in REFUSALS):
        return "Z"
    words = answer.translate(LETTER_SEPARATORS).split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:
        return named[0]
    if not named and "Z" in words:
        return "Z"
    match = ANSWER_IS.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def letter_from_option_text(answer: str, choices: dict[str, str]) -> str | None:
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    named = [letter for letter, text in choices.items() if text.lower() in answer]
    return named[0] if len(named) == 1 else None


def infer_letter(answer: str, choices: dict[str, str]) -> str | None:
    """The letter an answer picks (rules in the module docstring), ``"Z"`` for a refusal, or ``None``."""
    return letter_from_letters(answer, choices) or letter_from_option_text(answer, choices)


@dataclass
class Row:
    """One TSV row: its line, raw cells and integer ``index``."""

    line: int
    cells: dict[str, str]
    index: int

    def value(self, column: str) -> str | None:
        cell = self.cells.get(column)
        return None if is_missing(cell) else cell

    def prompt_options(self) -> list[str]:
        options = []
        for letter in PROMPT_LETTERS:
            if self.value(letter) is None:
                break
            options.append(self.cells[letter])
        return options


@dataclass
class Item:
    """A question as asked: its id, circular group, options by letter and right letter."""

    question_id: int
    group: int
    options: dict[str, str]
    answer: str | None
    row: Row


def read_tsv(path: str | Path) -> tuple[list[str], list[Row]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = list(reader.fieldnames or [])
        for column in ("index", "question"):
            if column not in columns:
                raise InputError(path, f"no column {column!r}", 1)
        rows, seen = [], {}
        for cells in reader:
            row_number = reader.line_num  # a quoted cell may span lines
            try:
                index = int(cells["index"])
            except (TypeError, ValueError):
                raise InputError(path, f"index {cells['index']!r} is not an integer", row_number) from None
            if index in seen:
                raise InputError(path, f"index {index} repeats line {seen[index]}", row_number)
            seen[index] = row_number
            row = Row(row_number, cells, index)
            if len(row.prompt_options()) < 2:
                raise InputError(path, f"index {index}: fewer than two options", row_number)
            rows.append(row)
    if not rows:
        raise InputError(path, "no rows")
    return columns, rows


def has_circular_copies(rows: list[Row]) -> bool:
    return any(row.index >= CIRCULAR_OFFSET for row in rows)


def questions_of(rows: list[Row], tsv: str | Path, circular: bool = True) -> list[Item]:
    """The questions asked: each row once if the TSV has copies, else each rotation (or row 0)."""
    copies = has_circular_copies(rows)
    if copies and not circular:
        raise InputError(tsv, "--no-circular: this TSV already holds circular copies (index >= 1000000)")
    items = []
    for row in rows:
        options = row.prompt_options()
        answer = row.value("answer")
        if answer is not None and answer not in string.ascii_uppercase[: len(options)]:
            raise InputError(tsv, f"index {row.index}: answer {answer!r} is not one of the option letters", row.line)
        rotations = 1 if copies or not circular else len(options)
        for rotation in range(rotations):
            letters = string.ascii_uppercase[: len(options)]
            rotated = {letters[i]: options[(i + rotation) % len(options)] for i in range(len(options))}
            right = letters[(letters.index(answer) - rotation) % len(options)] if answer else None
            question_id = row.index + rotation * CIRCULAR_OFFSET
            items.append(Item(question_id, row.index % CIRCULAR_OFFSET, rotated, right, row))
    return items


def question_text(row: Row, options: dict[str, str]) -> str:
    """LLaVA's MMBench prompt: hint, question, ``A. option`` lines, the single-letter instruction."""
    hint = row.value("hint")
    text = row.cells["question"] if hint is None else f"{hint}\n{row.cells['question']}"
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    return f"{text}\n{OPTION_PROMPT}"


def image_row(row: Row, by_index: dict[int, Row]) -> Row:
    """The row holding ``row``'s base64 image (VLMEvalKit's TSVs give a repeated image as an index)."""
    image = row.cells.get("image") or ""
    return by_index[int(image)] if image.isdigit() and int(image) in by_index else row


def build_questions(tsv: str | Path, image_dir: str | Path, circular: bool = True) -> list[dict]:
    """LLaVA-style question records; images are written to ``image_dir`` as ``{index}.png``."""
    _, rows = read_tsv(tsv)
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    by_index = {row.index: row for row in rows}
    records = []
    for item in questions_of(rows, tsv, circular):
        source = image_row(item.row, by_index)
        if source.index not in written:
            if source.value("image") is None:
                raise InputError(tsv, f"index {source.index}: no image", source.line)
            try:
                image = load_image(base64.b64decode(source.cells["image"]), "image")
            except (ValueError, binascii.Error) as error:
                raise InputError(tsv, f"index {source.index}: field 'image' is not a base64 image ({error})",
                                 source.line) from error
            image.save(image_dir / f"{source.index}.png")
            written.add(source.index)
        records.append({
            "question_id": item.question_id,
            "image": f"{source.index}.png",
            "text": question_text(item.row, item.options),
            "category": item.row.cells.get("category", ""),
        })
    return records


def answer_keys(answers: list[Numbered], answers_path: str | Path, expanded: bool) -> list[Numbered]:
    """Answers with ``question_id`` as the question asked: LLaVA's ``round_id`` k adds k * 1,000,000."""
    keyed = []
    for line, answer in answers:
        round_id = answer.get("round_id") or 0
        try:
            question_id = int(answer["question_id"]) + int(round_id) * CIRCULAR_OFFSET
        except (TypeError, ValueError):
            raise InputError(answers_path, "question_id and round_id must be integers", line) from None
        if round_id and not expanded:
            raise InputError(answers_path, f"round_id {round_id}: the TSV already holds circular copies (index >= "
                             "1000000), so each row is asked once, never rotated again", line)
        keyed.append((line, {**answer, "question_id": question_id}))
    return keyed


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values)


def score(
    tsv: str | Path, answers_path: str | Path, circular: bool = True, submission: str | Path | None = None,
) -> dict[str, object]:
    """Circular accuracy over the questions, per category and l2-category, and per split (see the module
    docstring)."""
    columns, rows = read_tsv(tsv)
    answers = read_jsonl(answers_path)
    result: dict[str, object] = {}
    if submission is not None:
        write_submission(columns, rows, answers, submission)
        result["submission"] = str(submission)
    items = questions_of(rows, tsv, circular)
    unanswerable = [item for item in items if item.answer is None]
    if unanswerable:
        if submission is not None:
            return result
        raise InputError(tsv, "no ground-truth answer", unanswerable[0].row.line)
    expanded = circular and not has_circular_copies(rows)
    keyed = answer_keys(answers, answers_path, expanded)
    texts = answer_texts(keyed, answers_path, [str(item.question_id) for item in items], str(tsv))
    group_hits: dict[int, list[bool]] = defaultdict(list)
    for item in items:
        group_hits[item.group].append(infer_letter(texts[str(item.question_id)], item.options) == item.answer)
    solved = {row.index: all(group_hits[row.index]) for row in rows if row.index < CIRCULAR_OFFSET}
    main_rows = [row for row in rows if row.index < CIRCULAR_OFFSET]
    result.update({
        "rule": "vlmevalkit can_infer",
        "circular": "tsv copies" if has_circular_copies(rows) else ("expanded" if circular else "off"),
        "accuracy": _mean(list(solved.values())),
        "questions": len(solved),
    })
    result.update(group_accuracies(main_rows, solved, columns))
    if "split" in columns:
        result["split"] = {}
        for split in sorted({row.cells["split"] for row in main_rows}):
            split_rows = [row for row in main_rows if row.cells["split"] == split]
            result["split"][split] = {"accuracy": _mean([solved[row.index] for row in split_rows]),
                                      **group_accuracies(split_rows, solved, columns, main_rows)}
    return result


def group_accuracies(rows: list[Row], solved: dict[int, bool], columns: list[str],
                     all_rows: list[Row] | None = None) -> dict[str, dict[str, float]]:
    """Accuracy of ``rows`` per ``category`` and per ``l2-category``. With ``all_rows`` (a split's
    rows among all), every value of ``all_rows`` is listed and the ones without rows here are NaN,
    as VLMEvalKit's ``report_acc`` reports them."""
    result = {}
    for column in ("category", "l2-category"):
        if column in columns:
            per_value: dict[str, list[bool]] = {row.cells[column]: [] for row in all_rows or rows}
            for row in rows:
                per_value[row.cells[column]].append(solved[row.index])
            result[column] = {name: _mean(hits) if hits else math.nan for name, hits in sorted(per_value.items())}
    return result


def typed_columns(columns: list[str], rows: list[Row]) -> dict[str, type]:
    """The type pandas gives each column: int, float (numbers, or integers with blanks) or str."""
    types = {}
    for column in columns:
        present = [row.cells[column] for row in rows if not (row.cells.get(column) in PANDAS_MISSING)]
        blanks = len(present) < len(rows)
        if present and all(re.fullmatch(r"[+-]?\d+", value) for value in present):
            types[column] = float if blanks else int
        elif present and all(re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value) for value in present):
            types[column] = float
        else:
            types[column] = str
    return types


def write_submission(columns: list[str], rows: list[Row], answers: list[Numbered], path: str | Path) -> None:
    """The .xlsx of LLaVA's ``convert_mmbench_for_submission.py`` for these answers."""
    predictions: dict[str, str] = {}
    for _, answer in answers:
        predictions[str(answer["question_id"])] = answer.get("text")
    kept = [column for column in columns if column not in SUBMISSION_DROPPED]
    types = typed_columns(kept, rows)
    header = list(kept)
    header.insert(min(SUBMISSION_PREDICTION_COLUMN, len(header)), "prediction")
    table: list[list[Cell]] = []
    for row in rows:
        values: dict[str, Cell] = {"prediction": predictions.get(str(row.index))}
        for column in kept:
            cell = row.cells.get(column)
            values[column] = None if cell in PANDAS_MISSING or cell is None else types[column](cell)
        table.append([values[column] for column in header])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_xlsx(header, table, path)


@command
def main(argv: list[str] | None = None) -> int:
    parser, build, scoring = build_and_score_parsers(__doc__)
    build.add_argument("--tsv", required=True)
    build.add_argument("--image-dir", required=True)
    build.add_argument("--output", required=True)
    build.add_argument("--no-circular", action="store_true", help="ask each row once (TSV without copies)")
    scoring.add_argument("--tsv", required=True)
    scoring.add_argument("--answers", required=True)
    scoring.add_argument("--no-circular", action="store_true", help="each row once (TSV without copies)")
    scoring.add_argument("--submission", help="also write LLaVA's submission .xlsx here")
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.tsv, args.image_dir, not args.no_circular), args.output)
        return 0
    print_json(score(args.tsv, args.answers, not args.no_circular, args.submission))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
