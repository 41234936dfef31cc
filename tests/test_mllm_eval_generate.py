"""Answers written by mllm.eval.generate, and the padded-square frame of LLaVA-1.5's processor."""
import pytest
import torch
from PIL import Image, ImageDraw

from mllm import build_llava
from mllm.eval import generate, refcoco
from mllm.eval.generate import generate_answers
from mllm.testing import save_tiny_fgclip, save_tiny_llama


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_llava(save_tiny_llama(root / "lm"), save_tiny_fgclip(root / "fgclip"))


@torch.no_grad()
def test_answers_are_written_in_llavas_answer_layout(tiny_llava, tmp_path):
    model, processor = tiny_llava
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    questions = [{"question_id": 7, "image": "red.png", "text": "Is there a dog in the image?", "category": "random"},
                 {"question_id": 8, "text": "Say hello."}]
    answers = generate_answers(model, processor, questions, tmp_path, max_new_tokens=3, model_id="tiny")
    assert [list(answer) for answer in answers] == [["question_id", "prompt", "text", "answer_id", "model_id",
                                                     "metadata"]] * 2
    assert [(a["question_id"], a["prompt"], a["model_id"], a["metadata"]) for a in answers] == [
        (7, "Is there a dog in the image?", "tiny", {}), (8, "Say hello.", "tiny", {})]
    assert len({answer["answer_id"] for answer in answers}) == 2


def test_generate_reports_a_bad_question_file_without_a_traceback(tmp_path, capsys):
    (tmp_path / "questions.jsonl").write_text('{"question_id": 1, "text": "a"}\n{"text": "b"}\n')
    arguments = ["--model", str(tmp_path / "no-model"), "--questions", str(tmp_path / "questions.jsonl"),
                 "--answers", str(tmp_path / "answers.jsonl")]
    assert generate.main(arguments) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'questions.jsonl'}:2: field 'question_id' is missing\n"


def test_padded_frame_matches_the_llava_image_processor(tiny_llava):
    """A box drawn in a 64x32 image lands where pixels_to_normalized says in the padded model input."""
    _, processor = tiny_llava
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
    assert refcoco.padded_to_original([x1, y1, x2, y2], 64, 32) == [0.25, 0.25, 0.75, 0.75]
