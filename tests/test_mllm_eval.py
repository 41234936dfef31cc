"""mllm.eval scorers against the numbers the official scorers print on the same files.

The files under tests/data/mllm_eval/ are small LLaVA-layout question, label and answer files
full of edge cases. The expected values were printed by the official code, run on these very
files (never copied into this repository):

* LLaVA haotian-liu/LLaVA@c121f0432da27facab705978f83c4ada465e46fd: ``llava/eval/eval_pope.py``,
  ``scripts/convert_gqa_for_eval.py``, ``scripts/convert_mmbench_for_submission.py``;
* GQA's ``eval.py`` as LLaVA runs it (kept in SHI-Labs/VCoder@4e85acef896cee7843257d5d844ec945407efb13,
  ``playground/data/eval/gqa/data/eval/eval.py``), ``--tier testdev_balanced``;
* VLMEvalKit open-compass/VLMEvalKit@e8e78f05f3080fe28154f2130321f17951c3be94:
  ``vlmeval/utils/matching_util.py`` (``can_infer``) and ``vlmeval/dataset/utils/multiple_choice.py``
  (``mcq_circular_eval`` with exact matching, ``report_acc``);
* lmms-eval EvolvingLMMs-Lab/lmms-eval@75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3:
  ``lmms_eval/tasks/refcoco/utils_rec.py`` (preprocess, process_result, aggregations).
"""
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from mllm.eval import gqa, mmbench, pope, refcoco
from mllm.eval.jsonl import InputError

DATA = Path(__file__).parent / "data" / "mllm_eval"


def copy_data(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA / name, tmp_path / name))


# ---------------------------------------------------------------- POPE
def test_pope_on_llava_files_equals_eval_pope(tmp_path):
    """LLaVA's question file (integer ids over all categories), POPE's label files, LLaVA answers."""
    data = DATA / "pope"
    result = pope.score(data / "llava_pope_test.jsonl", data / "answers.jsonl", data / "coco")
    assert result["rule"] == "llava eval_pope.py"
    # eval_pope.py printed, per category: TP FP TN FN, then accuracy, precision, recall, F1, yes ratio
    assert result["popular"] == pytest.approx({
        "tp": 2, "fp": 2, "tn": 1, "fn": 0, "total": 5, "accuracy": 0.6, "precision": 0.5, "recall": 1.0,
        "f1": 0.6666666666666666, "yes_ratio": 0.8})
    assert result["random"] == pytest.approx({
        "tp": 2, "fp": 1, "tn": 2, "fn": 1, "total": 6, "accuracy": 0.6666666666666666,
        "precision": 0.6666666666666666, "recall": 0.6666666666666666, "f1": 0.6666666666666666, "yes_ratio": 0.5})
    # adversarial: every answer reads "no"; eval_pope.py printed TP 0 FP 0 TN 2 FN 2, then stopped on
    # ZeroDivisionError in the precision: here 0 for precision, recall, F1 and yes ratio
    assert result["adversarial"] == pytest.approx({
        "tp": 0, "fp": 0, "tn": 2, "fn": 2, "total": 4, "accuracy": 0.5, "precision": 0.0, "recall": 0.0,
        "f1": 0.0, "yes_ratio": 0.0})
    assert result["mean"]["f1"] == pytest.approx((0.0 + 2 / 3 + 2 / 3) / 3)


@pytest.mark.parametrize("text, official, lenient", [
    ("No", "no", "no"), ("no.", "no", "no"), ("NO", "yes", "no"), ("Not really.", "yes", "no"),
    ("No\nthere is none", "yes", "no"), ("Yes, there is. But no cat", "yes", "yes"), ("no,", "no", "no"),
    ("yes, but not the red one.", "no", "no"), ("Yes.\nNo.", "yes", "yes"), ("nope", "yes", "yes"),
    ("There is no-one", "yes", "yes"), ("(no)", "yes", "no"),
])
def test_pope_answer_reading(text, official, lenient):
    assert pope.answer_label(text) == official
    assert pope.answer_label(text, lenient=True) == lenient


def test_pope_lenient_flag_is_named_in_the_output():
    data = DATA / "pope"
    result = pope.score(data / "llava_pope_test.jsonl", data / "answers.jsonl", data / "coco", lenient=True)
    assert result["rule"] == "lenient"
    # "NO", "Not really." and "No\nthere is none" now read "no"
    assert (result["popular"]["tp"], result["popular"]["fp"], result["popular"]["tn"], result["popular"]["fn"]) == (
        1, 0, 3, 1)


def test_pope_build_writes_llavas_question_layout_and_scores_without_label_files(tmp_path):
    data = DATA / "pope"
    questions = pope.build_questions(data / "coco")
    assert questions[0] == {
        "question_id": 1, "image": "COCO_val2014_000000310196.jpg", "category": "adversarial", "label": "yes",
        "text": "Is there a snowboard in the image?\nAnswer the question using a single word or phrase.",
    }
    # LLaVA's ids: adversarial 1.., random 10000001.., popular 20000001..; the labels added
    llava_questions = [json.loads(line) for line in (data / "llava_pope_test.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in q.items() if k != "label"} for q in questions] == llava_questions
    pope_file = tmp_path / "pope.jsonl"
    assert pope.main(["build", "--annotation-dir", str(data / "coco"), "--output", str(pope_file)]) == 0
    assert pope.score(pope_file, data / "answers.jsonl")["random"]["tp"] == 2


def test_pope_labels_must_match_the_question_of_their_position(tmp_path):
    data = copy_data("pope", tmp_path)
    labels = (data / "coco" / "coco_pope_random.json").read_text().splitlines()
    labels[1], labels[2] = labels[2], labels[1]
    (data / "coco" / "coco_pope_random.json").write_text("\n".join(labels) + "\n")
    with pytest.raises(InputError, match=r"coco_pope_random\.json:2: label of .* does not match "
                                         r".*llava_pope_test\.jsonl:6 "):
        pope.score(data / "llava_pope_test.jsonl", data / "answers.jsonl", data / "coco")


# ---------------------------------------------------------------- GQA
def test_gqa_equals_convert_gqa_for_eval_and_gqa_eval():
    data = DATA / "gqa"
    result = gqa.score(data / "testdev_balanced_questions.json", data / "answers.jsonl")
    # eval.py printed Binary: 50.00%, Open: 66.67%, Accuracy: 60.00% (10 balanced questions; "yes. ",
    # " yes", "the ocean" and "dark blue\n" are wrong, "Short.." and "Computer Monitor" right)
    assert result == pytest.approx({"rule": "llava convert_gqa_for_eval.py + gqa eval.py", "accuracy": 0.6,
                                    "correct": 6, "total": 10, "binary": 0.5, "open": 2 / 3})


def test_gqa_lenient_strips_white_space():
    data = DATA / "gqa"
    result = gqa.score(data / "testdev_balanced_questions.json", data / "answers.jsonl", lenient=True)
    assert (result["rule"], result["correct"]) == ("lenient", 9)  # only "the ocean" stays wrong


def test_gqa_build_writes_llavas_question_layout():
    questions = gqa.build_questions(DATA / "gqa" / "testdev_balanced_questions.json")
    assert questions[0] == {"question_id": "201307251", "image": "n161313.jpg", "category": "default",
                            "text": "Is it overcast?\nAnswer the question using a single word or phrase."}


def test_gqa_every_balanced_question_needs_an_answer(tmp_path):
    data = copy_data("gqa", tmp_path)
    lines = (data / "answers.jsonl").read_text().splitlines()
    (data / "answers.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(InputError, match=r"answers\.jsonl: 1 questions of .* are unanswered, e\.g\. \['201307251'\]"):
        gqa.score(data / "testdev_balanced_questions.json", data / "answers.jsonl")
    # the unbalanced question may go unanswered
    (data / "answers.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert gqa.score(data / "testdev_balanced_questions.json", data / "answers.jsonl")["total"] == 10


# ---------------------------------------------------------------- MMBench
CAN_INFER = {  # answer -> VLMEvalKit can_infer(answer, {A: cat, B: dog, C: a red bus, D: bird}) (False as None)
    "B": "B", "(B)": "B", "**A**": "A", "[C]": "C", "D is correct": "D", "B. dog": "B", "The answer is C.": "C",
    "the answer is c": "C", "Answer: D": "D", "a red bus": "C", "A red bus": "A", "A cat is B": "A",
    "B is the answer because it shows a dog clearly": None, "I choose (D) bird.": "D", "dog": "B",
    "It is a dog or a cat": None, "Z": "Z", "None of them, Z": "Z", "b": None,
    "Cannot determine the answer, but maybe B": "Z", "Failed to obtain answer via API: B": None,
    "A. cat\nB. dog": None, "{C}": "C", "C;": "C", "Option B!": "B", "E": None, "#D": "D", "bird": "D",
    "BIRD": "D",
    "The correct answer is **B**: dog, the animal in the picture is clearly a dog that sits on grass.": "B",
}


def test_letter_inference_equals_vlmevalkit_can_infer():
    choices = {"A": "cat", "B": "dog", "C": "a red bus", "D": "bird"}
    assert {answer: mmbench.infer_letter(answer, choices) for answer in CAN_INFER} == CAN_INFER


# mcq_circular_eval + report_acc on mmbench_circular.tsv with LLaVA's submission of answers_circular.jsonl:
# hits 0: 1, 1: 1, 2: 0, 4: 0, 5: 0, 6: 1; Overall 0.5, CP 0.333333, fine 0.666667, animal 1.0,
# attribute 1.0, counting 0.0, object 0.0, scene 0.0
VLMEVALKIT_GROUPS = {
    "category": {"animal": 1.0, "attribute": 1.0, "counting": 0.0, "object": 0.0, "scene": 0.0},
    "l2-category": {"coarse_perception": 1 / 3, "fine": 2 / 3},
}
VLMEVALKIT_CIRCULAR = {
    "rule": "vlmevalkit can_infer", "accuracy": 0.5, "questions": 6, **VLMEVALKIT_GROUPS,
    "split": {"dev": {"accuracy": 0.5, **VLMEVALKIT_GROUPS}},  # every row is in split "dev"
}


def test_mmbench_tsv_with_circular_copies_equals_vlmevalkit():
    data = DATA / "mmbench"
    result = mmbench.score(data / "mmbench_circular.tsv", data / "answers_circular.jsonl")
    assert result == {**VLMEVALKIT_CIRCULAR, "circular": "tsv copies"}


def test_mmbench_per_split_equals_vlmevalkit_report_acc(tmp_path):
    """Rows 4, 5, 6 (and their copies) moved to split "test". VLMEvalKit's report_acc (e8e78f0,
    vlmeval/dataset/utils/multiple_choice.py) on those hits printed, with CP = coarse_perception:
      split   Overall   CP  fine  animal  attribute  counting  object  scene
       test  0.333333  0.0   1.0     NaN        1.0       NaN     0.0    0.0
        dev  0.666667  1.0   0.5     1.0        1.0       0.0     NaN    NaN"""
    lines = (DATA / "mmbench" / "mmbench_circular.tsv").read_text().splitlines()
    moved = [line.rsplit("\t", 1)[0] + "\ttest" if int(line.split("\t")[0]) % 1_000_000 in (4, 5, 6) else line
             for line in lines[1:]]
    (tmp_path / "split.tsv").write_text("\n".join([lines[0], *moved]) + "\n")
    result = mmbench.score(tmp_path / "split.tsv", DATA / "mmbench" / "answers_circular.jsonl")
    nan = float("nan")
    expected = {
        "test": {"accuracy": 1 / 3, "l2-category": {"coarse_perception": 0.0, "fine": 1.0},
                 "category": {"animal": nan, "attribute": 1.0, "counting": nan, "object": 0.0, "scene": 0.0}},
        "dev": {"accuracy": 2 / 3, "l2-category": {"coarse_perception": 1.0, "fine": 0.5},
                "category": {"animal": 1.0, "attribute": 1.0, "counting": 0.0, "object": nan, "scene": nan}},
    }
    assert set(result["split"]) == set(expected)
    for split, values in expected.items():
        assert result["split"][split]["accuracy"] == pytest.approx(values["accuracy"])
        for column in ("category", "l2-category"):
            assert result["split"][split][column] == pytest.approx(values[column], nan_ok=True)
    assert result["accuracy"] == 0.5  # over both splits, as before


def test_mmbench_rotations_expanded_for_a_tsv_without_copies(tmp_path):
    """LLaVA's --all-rounds answers (round_id k) on the same questions, given once without copies."""
    data = DATA / "mmbench"
    items = mmbench.questions_of(mmbench.read_tsv(data / "mmbench_plain.tsv")[1], "plain")
    by_id = {item.question_id: item for item in items}
    copies = {row.index: row for row in mmbench.read_tsv(data / "mmbench_circular.tsv")[1]}
    for index, row in copies.items():  # the copies in mmbench_circular.tsv are LLaVA's rotations
        assert list(by_id[index].options.values()) == row.prompt_options()
        assert by_id[index].answer == row.cells["answer"]
    assert sorted(by_id) == sorted([*copies, 1000006])
    result = mmbench.score(data / "mmbench_plain.tsv", data / "answers_all_rounds.jsonl")
    assert result == {**VLMEVALKIT_CIRCULAR, "circular": "expanded"}


def test_mmbench_circular_copies_are_never_rotated_again(tmp_path):
    data = DATA / "mmbench"
    with pytest.raises(InputError, match=r"answers_all_rounds\.jsonl:2: round_id 1: the TSV already holds circular"):
        mmbench.score(data / "mmbench_circular.tsv", data / "answers_all_rounds.jsonl")
    with pytest.raises(InputError, match="already holds circular copies"):
        mmbench.score(data / "mmbench_circular.tsv", data / "answers_circular.jsonl", circular=False)


def test_mmbench_tsv_errors_name_the_line(tmp_path):
    lines = (DATA / "mmbench" / "mmbench_circular.tsv").read_text().splitlines()
    cells = lines[3].split("\t")
    cells[7] = "D"  # question 2 has three options
    (tmp_path / "bad.tsv").write_text("\n".join([*lines[:3], "\t".join(cells), *lines[4:]]) + "\n")
    with pytest.raises(InputError, match=r"bad\.tsv:4: index 2: answer 'D' is not one of the option letters"):
        mmbench.score(tmp_path / "bad.tsv", DATA / "mmbench" / "answers_circular.jsonl")


def test_mmbench_build_names_a_row_without_image(tmp_path):
    lines = (DATA / "mmbench" / "mmbench_plain.tsv").read_text().splitlines()
    cells = lines[2].split("\t")
    cells[9] = ""
    (tmp_path / "bad.tsv").write_text("\n".join([*lines[:2], "\t".join(cells), *lines[3:]]) + "\n")
    with pytest.raises(InputError, match=r"bad\.tsv:3: index 1: no image"):
        mmbench.build_questions(tmp_path / "bad.tsv", tmp_path / "images")


def read_xlsx(path: Path) -> list[list]:
    """Rows of our one-sheet .xlsx: inline strings as str, numbers as int, empty cells as None."""
    sheet = zipfile.ZipFile(path).read("xl/worksheets/sheet1.xml").decode()
    rows = []
    for row in re.findall(r"<row [^>]*>(.*?)</row>", sheet, re.S):
        cells = {}
        for column, body in re.findall(r'<c r="([A-Z]+)\d+"[^>]*>(.*?)</c>', row, re.S):
            text = re.search(r"<(?:t|v)[^>]*>(.*?)</(?:t|v)>", body, re.S).group(1)
            cells[column] = int(text) if body.startswith("<v>") else text.replace("&amp;", "&")
        width = max(ord(column) - ord("A") + 1 for column in cells)
        rows.append([cells.get(chr(ord("A") + i)) for i in range(width)])
    return rows


def test_mmbench_submission_equals_convert_mmbench_for_submission(tmp_path):
    data = DATA / "mmbench"
    mmbench.score(data / "mmbench_circular.tsv", data / "answers_circular.jsonl", submission=tmp_path / "c.xlsx")
    mmbench.score(data / "mmbench_plain.tsv", data / "answers_all_rounds.jsonl", submission=tmp_path / "p.xlsx")
    circular, plain = read_xlsx(tmp_path / "c.xlsx"), read_xlsx(tmp_path / "p.xlsx")
    # the script's .xlsx (read back with pandas): these columns, index as integers, NaN options empty
    header = ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert circular[0] == plain[0] == header
    assert circular[2] == [1, "Is the light on?", "yes", "no", None, None, "Yes", "A", "dev"]
    assert [(row[0], row[6]) for row in circular[1:]] == [
        (0, "B"), (1, "Yes"), (2, "4"), (4, "A is correct"),
        (5, "I think the correct answer is **D** because the sky is grey"), (6, "Green."), (1000000, "(A) dog"),
        (1000001, "[B]"), (1000002, "B. 4"), (1000004, "apple"), (1000005, "C) cloudy"), (2000000, "**D**"),
        (2000002, "A\nThere are four apples in the picture, I counted them one by one carefully."),
        (2000004, "Answer: C"), (2000005, "B"), (3000000, "The answer is C."), (3000004, "b"),
        (3000005, "Cannot determine the answer")]
    # several rounds per question_id: the last one is kept, as the script's row assignment does
    assert [(row[0], row[6]) for row in plain[1:]] == [
        (0, "The answer is C."), (1, "[B]"),
        (2, "A\nThere are four apples in the picture, I counted them one by one carefully."), (4, "b"),
        (5, "Cannot determine the answer"), (6, "A")]


def test_mmbench_build_asks_each_tsv_row_once_with_llavas_prompt(tmp_path):
    data = DATA / "mmbench"
    questions = mmbench.build_questions(data / "mmbench_circular.tsv", tmp_path / "images")
    assert [q["question_id"] for q in questions][:7] == [0, 1, 2, 4, 5, 6, 1000000]
    by_id = {q["question_id"]: q for q in questions}
    assert by_id[1000002] == {
        "question_id": 1000002, "image": "2.png", "category": "counting",
        "text": "Count carefully.\nHow many apples?\nA. 3\nB. 4\nC. 2\n"
                "Answer with the option's letter from the given choices directly.",
    }
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == [f"{i}.png" for i in (0, 1, 2, 4, 5, 6)]
    expanded = mmbench.build_questions(data / "mmbench_plain.tsv", tmp_path / "images")
    assert len(expanded) == len(questions) + 1  # question 6 has no copy in the circular TSV


# ---------------------------------------------------------------- RefCOCO
# utils_rec on these questions and answers printed IoU 0.33298839426410587, ACC@0.1 0.5, ACC@0.3 0.5,
# ACC@0.5 0.3333333333333333, ACC@0.7 0.16666666666666666, ACC@0.9 0.16666666666666666, Center_ACC 0.6666666666666666
LMMS_EVAL_REC = {"IoU": 0.33298839426410587, "ACC@0.1": 0.5, "ACC@0.3": 0.5, "ACC@0.5": 1 / 3, "ACC@0.7": 1 / 6,
                 "ACC@0.9": 1 / 6, "Center_ACC": 2 / 3}


@pytest.fixture
def rec_questions(tmp_path) -> Path:
    data = DATA / "refcoco"
    path = tmp_path / "rec.jsonl"
    assert refcoco.main(["build", "--refs", str(data / "refs(unc).p"), "--instances", str(data / "instances.json"),
                         "--split", "val", "--output", str(path)]) == 0
    return path


def test_refcoco_equals_lmms_eval_utils_rec(rec_questions):
    result = refcoco.score(rec_questions, DATA / "refcoco" / "answers.jsonl")
    assert result == pytest.approx({"frame": "original", **LMMS_EVAL_REC, "unparsed": 3, "total": 12})


@pytest.mark.parametrize("text, box", [
    ("[0.25, 0.25, 0.75, 0.75]", [0.25, 0.25, 0.75, 0.75]),
    ("1. The dog\n2. [-0.1, 0.2, 0.6, 0.8]", [-0.1, 0.2, 0.6, 0.8]),
    ("[50, 25, 150, 75]", [50.0, 25.0, 150.0, 75.0]),
    ("The box is (0.25, 0.25, 0.75, 0.75).", None),
    ("[0.3 , 0.3, 0.7, 0.7]", None),
    ("[.1, 0.07, 0.89, 0.93]", None),
    ("[0.30, 0.10, 0.70, 0.90] and [0, 0, 1, 1]", [0.3, 0.1, 0.7, 0.9]),
])
def test_box_parser_takes_the_first_bracketed_box(text, box):
    """As printed by utils_rec's parser on the same answers ([0, 0, 0, 0] there for None here)."""
    assert refcoco.parse_box(text) == box


def test_refcoco_padded_frame_is_an_option_named_in_the_output(rec_questions):
    result = refcoco.score(rec_questions, DATA / "refcoco" / "answers.jsonl", frame="padded")
    assert result["frame"] == "padded"
    # 200 x 100 image, square side 200, image at y offset 50: [0.25, 0.375, 0.75, 0.625] of the square is
    # the ground truth exactly, [0.25, 0.25, 0.75, 0.75] becomes [0.25, 0, 0.75, 1] (IoU 0.5)
    assert refcoco.padded_to_original([0.25, 0.375, 0.75, 0.625], 200, 100) == [0.25, 0.25, 0.75, 0.75]
    assert refcoco.box_iou([0.25, 0.25, 0.75, 0.75], [0.25, 0.0, 0.75, 1.0]) == 0.5
    assert result["ACC@0.9"] == pytest.approx(1 / 12)


def test_pixels_to_normalized_round_trip():
    box = [10.0, 20.0, 90.0, 280.0]  # 101 x 300: side 300, x offset (300 - 101) // 2 = 99
    padded = refcoco.pixels_to_normalized(box, 101, 300, "padded")
    assert padded[0] == pytest.approx((10 + 99) / 300)
    assert refcoco.padded_to_original(padded, 101, 300) == pytest.approx(
        refcoco.pixels_to_normalized(box, 101, 300, "original"))


def test_malformed_refs_and_instances_name_the_file(tmp_path):
    data = DATA / "refcoco"
    (tmp_path / "refs.json").write_text(json.dumps([{"ref_id": 1, "image_id": 5, "split": "val", "sentences": []}]))
    with pytest.raises(InputError, match=r"refs\.json: ref 0: field 'ann_id' is missing"):
        refcoco.build_questions(tmp_path / "refs.json", data / "instances.json", "val")
    (tmp_path / "instances.json").write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match=r"instances\.json: expected an object with 'images' and 'annotations'"):
        refcoco.build_questions(data / "refs(unc).p", tmp_path / "instances.json", "val")


class RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_refs_pickle_is_never_unpickled_unrestricted(tmp_path):
    data = DATA / "refcoco"
    marker = tmp_path / "code-ran"
    payload = RunsCode()
    payload.marker = str(marker)
    (tmp_path / "refs.p").write_bytes(pickle.dumps([payload]))
    with pytest.raises(InputError, match=r"refs\.p: not a pickle of plain data: refused to load pathlib"):
        refcoco.build_questions(tmp_path / "refs.p", data / "instances.json", "val")
    assert not marker.exists()
    # a JSON conversion of the refs gives the same questions as the pickle
    with open(data / "refs(unc).p", "rb") as handle:
        (tmp_path / "refs.json").write_text(json.dumps(pickle.load(handle)))
    assert refcoco.build_questions(tmp_path / "refs.json", data / "instances.json", "val") == \
        refcoco.build_questions(data / "refs(unc).p", data / "instances.json", "val")


# ---------------------------------------------------------------- bad input on the command line
@pytest.mark.parametrize("module, arguments, message", [
    (pope, ["score", "--questions", "{data}/pope/llava_pope_test.jsonl", "--answers", "{bad}",
            "--annotation-dir", "{data}/pope/coco"], "error: {bad}:2: invalid JSON"),
    (pope, ["score", "--questions", "{data}/pope/llava_pope_test.jsonl", "--answers", "{bad}"],
     "error: {data}/pope/llava_pope_test.jsonl:1: no yes/no 'label' (give --annotation-dir)"),
    (gqa, ["score", "--gqa-questions", "{data}/gqa/testdev_balanced_questions.json", "--answers", "{bad}"],
     "error: {bad}:2: invalid JSON"),
    (mmbench, ["score", "--tsv", "{data}/mmbench/mmbench_circular.tsv", "--answers", "{bad}"],
     "error: {bad}:2: invalid JSON"),
    (pope, ["score", "--questions", "{data}/pope/llava_pope_test.jsonl", "--answers",
            "{data}/gqa/answers.jsonl", "--annotation-dir", "{data}/pope/coco"],
     "error: {data}/gqa/answers.jsonl:1: question 201307251 is not in {data}/pope/llava_pope_test.jsonl"),
])
def test_bad_input_prints_the_file_and_line_and_exits_2(module, arguments, message, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "text": \n')
    fill = {"data": str(DATA), "bad": str(bad)}
    assert module.main([argument.format(**fill) for argument in arguments]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message.format(**fill))
    assert "Traceback" not in captured.err


def test_duplicate_answers_name_both_lines(tmp_path):
    data = DATA / "pope"
    lines = (data / "answers.jsonl").read_text().splitlines()
    (tmp_path / "answers.jsonl").write_text("\n".join([*lines, lines[4]]) + "\n")
    with pytest.raises(InputError, match=r"answers\.jsonl:16: question 10000001 is answered twice \(also on line 5\)"):
        pope.score(data / "llava_pope_test.jsonl", tmp_path / "answers.jsonl", data / "coco")
