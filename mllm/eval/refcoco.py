"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression comprehension: accuracy at IoU >= 0.5.

    python -m mllm.eval.refcoco build --refs "refs(unc).p" --instances instances.json --split val --output rec.jsonl
    python -m mllm.eval.refcoco score --questions rec.jsonl --answers answers.jsonl [--frame padded]

Box convention. The model answers ``[x1, y1, x2, y2]`` with coordinates in 0..1. In the
``padded`` frame (LLaVA-1.5's, whose training images are padded to a square) they are
fractions of the padded square of side ``S = max(W, H)``, in which the original image sits
at offset ``((S - W) // 2, (S - H) // 2)``; the pixel box in the original image is
``x = x_n * S - (S - W) // 2`` and ``y = y_n * S - (S - H) // 2``. In the ``original``
frame they are fractions of the original width and height: ``x = x_n * W``, ``y = y_n * H``.
Ground truth is COCO's ``[x, y, w, h]`` in original pixels. A prediction is parsed as the
first four numbers of the answer, clamped to 0..1 and, after conversion, to the image; an
answer without four numbers is a miss.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from pathlib import Path

import torch
from torchvision.ops import box_convert, box_iou

from .jsonl import pair_answers, read_jsonl, write_jsonl

FRAMES = ("padded", "original")
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)")


def parse_box(text: str) -> list[float] | None:
    """The first four numbers of ``text``, clamped to 0..1, or ``None`` if there are fewer."""
    numbers = [float(match) for match in NUMBER.findall(text)[:4]]
    if len(numbers) < 4:
        return None
    return [min(max(value, 0.0), 1.0) for value in numbers]


def _padding(width: float, height: float) -> tuple[float, float, float]:
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def normalized_to_pixels(box: list[float], width: float, height: float, frame: str = "padded") -> list[float]:
    """A 0..1 ``[x1, y1, x2, y2]`` in ``frame`` -> pixels of the original image (clipped to it)."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    if frame == "original":
        x1, y1, x2, y2 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    else:
        side, pad_x, pad_y = _padding(width, height)
        x1, y1, x2, y2 = box[0] * side - pad_x, box[1] * side - pad_y, box[2] * side - pad_x, box[3] * side - pad_y
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def pixels_to_normalized(box: list[float], width: float, height: float, frame: str = "padded") -> list[float]:
    """Inverse of :func:`normalized_to_pixels` for a box inside the image (e.g. to write targets)."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    if frame == "original":
        return [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    side, pad_x, pad_y = _padding(width, height)
    return [(box[0] + pad_x) / side, (box[1] + pad_y) / side, (box[2] + pad_x) / side, (box[3] + pad_y) / side]


def build_questions(refs_pickle: str | Path, instances_json: str | Path, split: str) -> list[dict]:
    """One question per referring sentence of ``split``, from the ``refer`` toolkit's files.

    Args:
        refs_pickle: ``refs(unc).p`` (RefCOCO, RefCOCO+) or ``refs(umd).p`` (RefCOCOg): a list of
            ``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent_id", "sent"}]}``.
        instances_json: the matching ``instances.json`` (COCO images and annotations).
    """
    with open(refs_pickle, "rb") as handle:
        refs = pickle.load(handle)
    instances = json.loads(Path(instances_json).read_text(encoding="utf-8"))
    images = {image["id"]: image for image in instances["images"]}
    annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}
    records = []
    for ref in refs:
        if ref["split"] != split:
            continue
        if ref["ann_id"] not in annotations or ref["image_id"] not in images:
            raise ValueError(
                f"{refs_pickle}: ref_id {ref['ref_id']}: annotation or image missing from {instances_json}"
            )
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
        raise ValueError(f"{refs_pickle}: no referring expressions in split {split!r}")
    return records


def score(
    questions: list[dict], answers: list[dict], frame: str = "padded", threshold: float = 0.5
) -> dict[str, float]:
    """``{"accuracy", "correct", "unparsed", "total"}``; a hit has IoU >= ``threshold``."""
    pairs = pair_answers(questions, answers)
    correct = unparsed = 0
    for question, text in pairs:
        box = parse_box(text)
        if box is None:
            unparsed += 1
            continue
        predicted = torch.tensor([normalized_to_pixels(box, question["width"], question["height"], frame)])
        truth = box_convert(torch.tensor([question["bbox"]], dtype=torch.float32), "xywh", "xyxy")
        correct += int(box_iou(predicted, truth)[0, 0] >= threshold)
    return {"accuracy": correct / len(pairs), "correct": correct, "unparsed": unparsed, "total": len(pairs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("--refs", required=True)
    build.add_argument("--instances", required=True)
    build.add_argument("--split", required=True, help="val, testA, testB (RefCOCO/+) or val, test (RefCOCOg)")
    build.add_argument("--output", required=True)
    scoring = commands.add_parser("score")
    scoring.add_argument("--questions", required=True)
    scoring.add_argument("--answers", required=True)
    scoring.add_argument("--frame", default="padded", choices=FRAMES)
    args = parser.parse_args(argv)
    if args.command == "build":
        write_jsonl(build_questions(args.refs, args.instances, args.split), args.output)
    else:
        print(json.dumps(score(read_jsonl(args.questions), read_jsonl(args.answers), args.frame), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
