"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression comprehension (REC).

    python -m mllm.eval.refcoco build --refs "refs(unc).p" --instances instances.json --split val --output rec.jsonl
    python -m mllm.eval.refcoco score --questions rec.jsonl --answers answers.jsonl [--frame padded]

Rule (lmms-eval ``lmms_eval/tasks/refcoco/utils_rec.py``): the prediction is the first
``[x1, y1, x2, y2]`` in the answer (square brackets, four numbers written ``-?digits[.digits]``,
a comma after each of the first three); an answer without one predicts ``[0, 0, 0, 0]``. It is
compared, without clamping or clipping, with the ground-truth box normalised to the original
image (``x / W``, ``y / H``). IoU uses signed areas (an inverted box has a negative area); a
hit is IoU >= 0.5 (``ACC@0.5``, the number papers report); ``Center_ACC`` is whether the
predicted centre lies in the ground-truth box.

``--frame padded`` reads the prediction as fractions of the padded square of LLaVA-1.5's
``expand2square`` (side ``S = max(W, H)``, the image at ``((S - W) // 2, (S - H) // 2)``) and
converts it to the original image first; the output names the frame.

The refs file (``refs(unc).p``, ``refs(umd).p``) is a pickle, read by an unpickler that builds
only plain lists, dicts, strings and numbers (anything else is refused), or the same list as JSON.
"""
from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

from fgclip.errors import command

from .jsonl import InputError, build_and_score_parsers, answer_texts, print_json, read_json, read_jsonl, write_jsonl

FRAMES = ("original", "padded")
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."
NUMBER = r"(-?\d+(?:\.\d+)?)"
BOX = re.compile(r"\[\s*" + r",\s*".join([NUMBER] * 4) + r"\s*\]")
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, tuples, strings and numbers; refuses to import any class or function."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data is allowed")


def read_refs(path: str | Path) -> list[dict]:
    """The refer toolkit's refs list from its pickle (restricted) or a JSON conversion."""
    path = Path(path)
    if path.suffix == ".json":
        refs = read_json(path)
    else:
        if not path.is_file():
            raise InputError(path, "file not found")
        try:
            with path.open("rb") as handle:
                refs = PlainDataUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise InputError(path, f"not a pickle of plain data: {error}") from error
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise InputError(path, "expected a list of refs (dicts)")
    return refs


def parse_box(text: str) -> list[float] | None:
    """The first ``[x1, y1, x2, y2]`` of ``text`` (lmms-eval's pattern), or ``None``."""
    match = BOX.search(text)
    return [float(value) for value in match.groups()] if match else None


def _padding(width: float, height: float) -> tuple[float, float, float]:
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def padded_to_original(box: list[float], width: float, height: float) -> list[float]:
    """Fractions of the ``expand2square`` square -> fractions of the original image (not clipped)."""
    side, pad_x, pad_y = _padding(width, height)
    return [(box[0] * side - pad_x) / width, (box[1] * side - pad_y) / height,
            (box[2] * side - pad_x) / width, (box[3] * side - pad_y) / height]


def pixels_to_normalized(box: list[float], width: float, height: float, frame: str = "original") -> list[float]:
    """A pixel ``[x1, y1, x2, y2]`` as fractions of the original image or of the padded square."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    if frame == "original":
        return [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    side, pad_x, pad_y = _padding(width, height)
    return [(box[0] + pad_x) / side, (box[1] + pad_y) / side, (box[2] + pad_x) / side, (box[3] + pad_y) / side]


def box_iou(truth: list[float], predicted: list[float]) -> float:
    """IoU with signed areas, as lmms-eval computes it; 0 when the union is 0 (lmms-eval divides by 0)."""
    width = max(0.0, min(truth[2], predicted[2]) - max(truth[0], predicted[0]))
    height = max(0.0, min(truth[3], predicted[3]) - max(truth[1], predicted[1]))
    intersection = width * height
    truth_area = (truth[2] - truth[0]) * (truth[3] - truth[1])
    union = truth_area + (predicted[2] - predicted[0]) * (predicted[3] - predicted[1]) - intersection
    return intersection / union if union else 0.0


def center_inside(truth: list[float], predicted: list[float]) -> bool:
    center_x, center_y = (predicted[0] + predicted[2]) / 2, (predicted[1] + predicted[3]) / 2
    return truth[0] <= center_x <= truth[2] and truth[1] <= center_y <= truth[3]


def build_questions(refs_path: str | Path, instances_json: str | Path, split: str) -> list[dict]:
    """One question per referring sentence of ``split``, from the refer toolkit's files.

    Args:
        refs_path: ``refs(unc).p`` (RefCOCO, RefCOCO+) or ``refs(umd).p`` (RefCOCOg), or its JSON:
            a list of ``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent_id", "sent"}]}``.
        instances_json: the matching ``instances.json`` (COCO images and annotations).
    """
    refs = read_refs(refs_path)
    instances = read_json(instances_json)
    if not isinstance(instances, dict) or not all(isinstance(instances.get(key), list)
                                                  for key in ("images", "annotations")):
        raise InputError(instances_json, "expected an object with 'images' and 'annotations' lists")
    images = {image.get("id"): image for image in instances["images"]}
    annotations = {annotation.get("id"): annotation for annotation in instances["annotations"]}
    records = []
    for index, ref in enumerate(refs):
        if ref.get("split") != split:
            continue
        missing = [key for key in ("ref_id", "ann_id", "image_id", "sentences") if key not in ref]
        if missing:
            raise InputError(refs_path, f"ref {index}: field {missing[0]!r} is missing")
        if ref["ann_id"] not in annotations or ref["image_id"] not in images:
            raise InputError(refs_path, f"ref {index} (ref_id {ref.get('ref_id')}): annotation or image missing "
                             f"from {instances_json}")
        image = images[ref["image_id"]]
        for sentence in ref["sentences"]:
            records.append({
                "question_id": f"{ref['ref_id']}-{sentence['sent_id']}",
                "image": image["file_name"],
                "text": REC_PROMPT.format(sentence["sent"]),
                "bbox": annotations[ref["ann_id"]]["bbox"],
                "width": image["width"],
                "height": image["height"],
            })
    if not records:
        raise InputError(refs_path, f"no referring expressions in split {split!r}")
    return records


def score(questions_path: str | Path, answers_path: str | Path, frame: str = "original") -> dict[str, object]:
    """lmms-eval's REC metrics (``ACC@0.5`` is the reported accuracy), ``unparsed`` answers, ``frame``."""
    questions = read_jsonl(questions_path, required=("question_id", "bbox", "width", "height"))
    texts = answer_texts(read_jsonl(answers_path), answers_path, [str(q["question_id"]) for _, q in questions],
                         str(questions_path))
    ious, centers, unparsed = [], [], 0
    for _, question in questions:
        x, y, w, h = question["bbox"]
        width, height = question["width"], question["height"]
        truth = [x / width, y / height, (x + w) / width, (y + h) / height]
        predicted = parse_box(texts[str(question["question_id"])])
        if predicted is None:
            unparsed += 1
            predicted = [0.0, 0.0, 0.0, 0.0]
        elif frame == "padded":
            predicted = padded_to_original(predicted, width, height)
        ious.append(box_iou(truth, predicted))
        centers.append(center_inside(truth, predicted))
    total = len(ious)
    result: dict[str, object] = {"frame": frame, "IoU": sum(ious) / total}
    result.update({f"ACC@{threshold}": sum(iou >= threshold for iou in ious) / total for threshold in THRESHOLDS})
    result.update({"Center_ACC": sum(centers) / total, "unparsed": unparsed, "total": total})
    return result


@command
def main(argv: list[str] | None = None) -> int:
    parser, build, scoring = build_and_score_parsers(__doc__)
    build.add_argument("--refs", required=True, help="refs(unc).p / refs(umd).p, or a JSON conversion")
    build.add_argument("--instances", required=True)
    build.add_argument("--split", required=True, help="val, testA, testB (RefCOCO/+) or val, test (RefCOCOg)")
    build.add_argument("--output", required=True)
    scoring.add_argument("--questions", required=True)
    scoring.add_argument("--answers", required=True)
    scoring.add_argument("--frame", default="original", choices=FRAMES,
                         help="padded: boxes are fractions of LLaVA-1.5's padded square")
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.refs, args.instances, args.split), args.output)
        return 0
    print_json(score(args.questions, args.answers, args.frame))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
