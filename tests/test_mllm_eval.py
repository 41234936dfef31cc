"""Benchmark scorers of mllm.eval against values worked out by hand on small answer files."""
import base64
import io
import json
import pickle

import pytest
import torch
from PIL import Image, ImageDraw

from mllm import build_llava
from mllm.eval import gqa, mmbench, pope, refcoco
from mllm.eval.jsonl import pair_answers, read_jsonl, write_jsonl
from mllm.testing import save_tiny_fgclip, save_tiny_llama


def answers_for(texts: dict) -> list[dict]:
    return [{"question_id": key, "text": text} for key, text in texts.items()]


# ---------------------------------------------------------------- answer files
def test_pairing_rejects_missing_unknown_and_duplicate_answers(tmp_path):
    questions = [{"question_id": "a"}, {"question_id": "b"}]
    with pytest.raises(ValueError, match=r"1 questions unanswered, e.g. \['b'\]"):
        pair_answers(questions, answers_for({"a": "x"}))
    with pytest.raises(ValueError, match=r"answers to unknown questions, e.g. \['c'\]"):
        pair_answers(questions, answers_for({"a": "x", "b": "y", "c": "z"}))
    with pytest.raises(ValueError, match="'a' is answered twice"):
        pair_answers(questions, answers_for({"a": "x"}) + answers_for({"a": "y", "b": "z"}))
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": "a", "text": "x"}\n{"question_id": \n')
    with pytest.raises(ValueError, match="answers.jsonl: line 2: invalid JSON"):
        read_jsonl(path)


# ---------------------------------------------------------------- GQA
def test_gqa_exact_match_after_normalisation(tmp_path):
    source = {
        "q1": {"imageId": "n1", "question": "Is it red?", "answer": "yes"},
        "q2": {"imageId": "n2", "question": "Which side?", "answer": "left"},
        "q3": {"imageId": "n3", "question": "What is on it?", "answer": "table"},
        "q4": {"imageId": "n4", "question": "What color?", "answer": "dark blue"},
    }
    (tmp_path / "gqa.json").write_text(json.dumps(source))
    questions = gqa.build_questions(tmp_path / "gqa.json")
    assert questions[0] == {"question_id": "q1", "image": "n1.jpg", "answer": "yes",
                            "text": "Is it red?\nAnswer the question using a single word or phrase."}
    answers = answers_for({"q1": "Yes.", "q2": " Left ", "q3": "the table", "q4": "Dark Blue."})
    assert gqa.score(questions, answers) == {"accuracy": 0.75, "correct": 3, "total": 4}


# ---------------------------------------------------------------- POPE
def test_pope_metrics_per_split_by_hand(tmp_path):
    random_split = [("yes", "Yes, there is a dog."), ("yes", "No, there is not."), ("no", "There is no dog."),
                    ("no", "Yes"), ("no", "I do not see one. But yes.")]
    popular_split = [("yes", "Nothing is hidden there, yes."), ("no", "not at all"), ("yes", "NO")]
    files = {}
    for name, rows in (("random", random_split), ("popular", popular_split)):
        files[name] = tmp_path / f"coco_pope_{name}.json"
        write_jsonl([{"question_id": i, "image": f"{i}.jpg", "text": "Is there a dog in the image?", "label": label}
                     for i, (label, _) in enumerate(rows)], files[name])
    questions = pope.build_questions(files)
    assert questions[0]["question_id"] == "random-0" and questions[0]["category"] == "random"
    answers = answers_for({f"{name}-{i}": text for name, rows in (("random", random_split), ("popular", popular_split))
                           for i, (_, text) in enumerate(rows)})
    result = pope.score(questions, answers)
    # random: predictions yes, no, no, yes, no -> TP 1, FN 1, TN 2, FP 1
    assert result["random"] == pytest.approx({"accuracy": 3 / 5, "precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2,
                                              "yes_ratio": 2 / 5, "total": 5})
    # popular: predictions yes ("Nothing" is not "no"), no, no -> TP 1, TN 1, FN 1, FP 0
    assert result["popular"] == pytest.approx({"accuracy": 2 / 3, "precision": 1.0, "recall": 1 / 2, "f1": 2 / 3,
                                               "yes_ratio": 1 / 3, "total": 3})
    assert result["mean"]["f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert pope.answer_label("No.") == "no" and pope.answer_label("Yes. It is not small.") == "yes"


# ---------------------------------------------------------------- RefCOCO
def test_box_parser():
    assert refcoco.parse_box("[0.25, 0.375, 0.75, 0.625]") == [0.25, 0.375, 0.75, 0.625]
    assert refcoco.parse_box("The box is (0.1,.2, 1.5, -0.3) ok 0.9") == [0.1, 0.2, 1.0, 0.0]
    assert refcoco.parse_box("[0.1, 0.2, 0.3]") is None
    assert refcoco.parse_box("no box here") is None


def test_padded_frame_conversion_by_hand_and_round_trip():
    # 200 x 100 image: padded square of side 200, original at y offset 50
    assert refcoco.normalized_to_pixels([0.25, 0.375, 0.75, 0.625], 200, 100, "padded") == [50, 25, 150, 75]
    assert refcoco.normalized_to_pixels([0.25, 0.375, 0.75, 0.625], 200, 100, "original") == [50, 37.5, 150, 62.5]
    assert refcoco.normalized_to_pixels([0.0, 0.0, 1.0, 1.0], 200, 100, "padded") == [0, 0, 200, 100]  # clipped
    # 101 x 300: side 300, x offset (300 - 101) // 2 = 99
    box = [10.0, 20.0, 90.0, 280.0]
    normalized = refcoco.pixels_to_normalized(box, 101, 300, "padded")
    assert normalized[0] == pytest.approx((10 + 99) / 300)
    assert refcoco.normalized_to_pixels(normalized, 101, 300, "padded") == pytest.approx(box)


def test_padded_frame_matches_the_llava_image_processor(tmp_path):
    """A box drawn in a 64x32 image lands where pixels_to_normalized says in the padded model input."""
    model, processor = build_llava(save_tiny_llama(tmp_path / "lm"), save_tiny_fgclip(tmp_path / "fgclip"))
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    ImageDraw.Draw(image).rectangle([16, 8, 47, 23], fill=(255, 255, 255))  # pixels 16..47 x 8..23
    x1, y1, x2, y2 = refcoco.pixels_to_normalized([16, 8, 48, 24], 64, 32, "padded")
    assert [x1, y1, x2, y2] == [0.25, 0.375, 0.75, 0.625]
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"][0, 0]  # red channel, 32x32
    white = (1 - processor.image_processor.image_mean[0]) / processor.image_processor.image_std[0]
    inside = pixels[int(y1 * 32) + 1 : int(y2 * 32) - 1, int(x1 * 32) + 1 : int(x2 * 32) - 1]
    assert torch.allclose(inside, torch.tensor(white), atol=1e-2)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[int(y1 * 32) - 1 : int(y2 * 32) + 1, int(x1 * 32) - 1 : int(x2 * 32) + 1] = False
    assert (pixels[outside] < white - 1).all()


def test_refcoco_accuracy_by_hand(tmp_path):
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 5, "split": "val", "sentences": [{"sent_id": 100, "sent": "left dog"},
                                                                               {"sent_id": 101, "sent": "dog"}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 5, "split": "val", "sentences": [{"sent_id": 102, "sent": "cat"}]},
        {"ref_id": 3, "ann_id": 12, "image_id": 5, "split": "testA", "sentences": [{"sent_id": 103, "sent": "x"}]},
    ]
    instances = {"images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "width": 200, "height": 100}],
                 "annotations": [{"id": 11, "bbox": [50, 25, 100, 50]}, {"id": 12, "bbox": [0, 0, 20, 20]}]}
    with open(tmp_path / "refs.p", "wb") as handle:
        pickle.dump(refs, handle)
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    questions = refcoco.build_questions(tmp_path / "refs.p", tmp_path / "instances.json", "val")
    assert [q["question_id"] for q in questions] == ["1-100", "1-101", "2-102"]
    assert questions[0]["text"] == ("Please provide the bounding box coordinate of the region this sentence "
                                    "describes: left dog.")
    answers = answers_for({
        "1-100": "[0.25, 0.375, 0.75, 0.625]",  # padded: exactly the box; original: [50, 37.5, 150, 62.5], IoU 0.5
        "1-101": "[0.3, 0.4, 0.8, 0.7]",  # padded: [60, 30, 160, 90]: IoU 4050 / 6950 = 0.583
        "2-102": "I cannot tell.",
    })
    assert refcoco.score(questions, answers, "padded") == {"accuracy": 2 / 3, "correct": 2, "unparsed": 1, "total": 3}
    # original frame: 1-100 IoU exactly 0.5 (a hit); 1-101 -> [60, 40, 160, 70]: 2700 / 5300 = 0.509 (a hit)
    assert refcoco.score(questions, answers, "original")["correct"] == 2
    answers[1]["text"] = "[0.3, 0.5, 0.8, 0.7]"  # original: [60, 50, 160, 70]: 1800 / 5200 = 0.346
    assert refcoco.score(questions, answers, "original")["correct"] == 1


# ---------------------------------------------------------------- MMBench
def test_letter_extraction():
    options = {"A": "cat", "B": "dog", "C": "a red bus"}
    cases = {"B": "B", "(C) a red bus": "C", "A. cat": "A", "The answer is B.": "B", "Option: C": "C",
             "the answer is a cat": "A", "It is a red bus": "C", "Bananas": None, "cat or dog": None, "D": None}
    assert {text: mmbench.extract_letter(text, options) for text in cases} == cases


def image_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_mmbench_circular_evaluation_by_hand(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    rows = [["7", "What animal?", "nan", "cat", "dog", "bus", "nan", "B", "animals", image_base64()],
            ["9", "Which number?", "Count them.", "one", "two", "three", "four", "D", "counting", image_base64()]]
    (tmp_path / "mmbench.tsv").write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n")
    questions = mmbench.build_questions(tmp_path / "mmbench.tsv", tmp_path / "images")
    assert len(questions) == 3 + 4
    assert (tmp_path / "images" / "7.png").is_file()
    by_id = {q["question_id"]: q for q in questions}
    # rotation k puts original option (i + k) mod n under letter i
    assert by_id["7-1"]["options"] == {"A": "dog", "B": "bus", "C": "cat"} and by_id["7-1"]["answer"] == "A"
    assert by_id["7-2"]["options"] == {"A": "bus", "B": "cat", "C": "dog"} and by_id["7-2"]["answer"] == "C"
    assert by_id["9-1"]["answer"] == "C" and by_id["9-3"]["answer"] == "A"
    assert by_id["9-0"]["text"] == ("Count them.\nWhich number?\nA. one\nB. two\nC. three\nD. four\n"
                                    "Answer with the option's letter from the given choices directly.")
    answers = answers_for({
        "7-0": "B", "7-1": "A.", "7-2": "The answer is C",  # all right: solved
        "9-0": "D", "9-1": "C", "9-2": "four", "9-3": "B",  # "four" is B in rotation 2; 9-3 is wrong
    })
    result = mmbench.score(questions, answers)
    assert result["circular_accuracy"] == 0.5
    assert result["vanilla_accuracy"] == 1.0
    assert result["per_category"] == {"animals": 1.0, "counting": 0.0}
    assert result["questions"] == 2
