"""FineHARD curation: spaCy expressions from hand-parsed docs, region selection (threshold, best
per expression, NMS), negative cleaning and checks, the transformers pipeline adapters (a tiny
random OWL-ViT through the real zero-shot-object-detection pipeline; scripted VLM / LLM
answers), and whole runs whose records read back through FineHARDReader, resume after a
cut-off line, and skip or name broken images."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy
import torch
from PIL import Image
from spacy.tokens import Doc
from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, pipeline

from fgclip.curation import (
    Detection,
    Expression,
    LLMNegativeWriter,
    PipelineGrounder,
    SpacyExpressionParser,
    VLMCaptioner,
    clean_expression,
    curate,
    extract_expressions,
    find_images,
    parse_negatives,
    select_regions,
    short_caption,
)
from fgclip.data import FineHARDReader
from fgclip.errors import run_command
from fgclip.processing_fgclip import clip_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
NLP = spacy.blank("en")
CAPTION = "A black dog with a red collar sits on the wooden bench near it and a black dog ."
PARSE = {  # word: (head index, dependency, part of speech), written out by hand
    "words": CAPTION.split(),
    "heads": [2, 2, 7, 2, 6, 6, 3, 7, 7, 11, 11, 8, 11, 12, 7, 17, 17, 14, 7],
    "deps": ["det", "amod", "nsubj", "prep", "det", "amod", "pobj", "ROOT", "prep", "det", "amod", "pobj", "prep",
             "pobj", "cc", "det", "amod", "conj", "punct"],
    "pos": ["DET", "ADJ", "NOUN", "ADP", "DET", "ADJ", "NOUN", "VERB", "ADP", "DET", "ADJ", "NOUN", "ADP", "PRON",
            "CCONJ", "DET", "ADJ", "NOUN", "PUNCT"],
}


def parsed(text: str) -> Doc:
    assert text == CAPTION
    return Doc(NLP.vocab, **PARSE)


def test_expressions_are_noun_chunks_without_pronouns_or_repeats():
    expressions = extract_expressions(parsed(CAPTION))
    assert [(e.text, e.head) for e in expressions] == [
        ("A black dog", "dog"), ("a red collar", "collar"), ("the wooden bench", "bench")]
    assert expressions[0].phrase == "A black dog with a red collar"
    assert extract_expressions(parsed(CAPTION), max_expressions=1) == expressions[:1]


def test_region_selection_threshold_best_per_expression_and_nms():
    detections = [
        Detection((0, 0, 10, 10), 0.9, 0), Detection((1, 1, 10, 10), 0.95, 0),  # best of query 0: 0.95
        Detection((0, 0, 10, 10), 0.8, 1),  # same object as query 0, lower score: removed by NMS
        Detection((20, 20, 40, 40), 0.4, 2),  # not above the threshold
        Detection((20, 20, 40, 40), 0.6, 3), Detection((5, 5, 5, 9), 0.99, 4),  # zero width: dropped
    ]
    kept = select_regions(detections)
    assert [(d.query, d.score) for d in kept] == [(0, 0.95), (3, 0.6)]
    assert select_regions(detections, iou_threshold=0.99) == [detections[1], detections[2], detections[4]]
    assert select_regions(detections, max_regions=1) == [detections[1]]


def test_negative_cleaning_and_checks():
    assert clean_expression(' 3. "A blue, woollen; dog."\n') == "A blue woollen dog"
    expression = Expression("a black dog", "dog", "a black dog")
    answer = "\n".join(["1. a white dog", "2) A BLACK DOG", "- a black cat", "* a brown, furry dog", "a white dog",
                        *[f"{i + 5}. a dog in shade {i}" for i in range(9)]])
    negatives = parse_negatives(answer, expression)
    assert negatives == ("a white dog", "a brown furry dog", *[f"a dog in shade {i}" for i in range(8)])
    assert parse_negatives("a white dog\na grey dog", expression) is None
    assert short_caption("A dog on a bench.") == "a photo of a dog on a bench"
    assert short_caption("a photo of a cat") == "a photo of a cat"


def tiny_detector():
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = OwlViTConfig(text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 16},
                          vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=32)
    processor = OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    return pipeline("zero-shot-object-detection", model=OwlViTForObjectDetection(config).eval(),
                    tokenizer=clip_bpe_tokenizer(), image_processor=processor)


def test_pipeline_grounder_converts_the_detector_output():
    detector = tiny_detector()
    image, queries = Image.new("RGB", (64, 48), (90, 20, 20)), ["a red car", "a dog"]
    raw = detector(image, candidate_labels=queries, threshold=0.0)
    found = PipelineGrounder(detector)(image, queries)
    assert len(found) == len(raw) > 0
    for detection, item in zip(found, raw):
        assert detection.query == queries.index(item["label"]) and detection.score == pytest.approx(item["score"])
        assert detection.box == tuple(item["box"][key] for key in ("xmin", "ymin", "xmax", "ymax"))
    assert PipelineGrounder(detector)(image, []) == []


class ScriptedChat:
    """A stand-in generation pipeline: records the chat messages, answers from a script."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, *args, **kwargs):
        messages = kwargs.get("text", args[0] if args else None)
        self.calls.append(messages)
        answer = self.answer(messages)
        return [{"generated_text": [*messages, {"role": "assistant", "content": answer}]}]


def test_generation_adapters_send_prompts_and_parse_answers():
    def vlm_answer(messages):
        prompt = messages[0]["content"][1]["text"]
        return "A dog.\n" if "short" in prompt else "A black dog   sits on a bench."

    vlm = ScriptedChat(vlm_answer)
    image = Image.new("RGB", (40, 30))
    assert VLMCaptioner(vlm).caption(image) == ("A black dog sits on a bench.", "a photo of a dog")
    assert VLMCaptioner(vlm).describe_region(image, (4, 3, 20, 15), Expression("a dog", "dog", "a dog")) == \
        "A black dog sits on a bench."
    assert vlm.calls[-1][0]["content"][0]["image"].size == (16, 12)  # the region crop
    llm = ScriptedChat(lambda messages: "\n".join(f"a dog number {i}" for i in range(12)))
    assert LLMNegativeWriter(llm)(Expression("a dog", "dog", "a dog")) == tuple(f"a dog number {i}" for i in range(10))
    assert '"a dog" 12 times' in llm.calls[0][0]["content"]


class FakeCaptioner:
    def caption(self, image):
        return CAPTION, "a photo of a dog"

    def describe_region(self, image, box, expression):
        return f"{expression.text} seen closely"


def fake_grounder(image, queries):
    width, height = image.size
    return [Detection((0, 0, width / 2, height / 2), 0.9, 0), Detection((width / 2, 0, width + 5, height), 0.7, 2),
            Detection((0, 0, width / 2, height / 2), 0.3, 1)]


def fake_negatives(expression):
    return None if expression.head == "bench" else tuple(f"a {colour} {expression.head}" for colour in
                                                         ("white", "brown", "grey", "gold", "pink", "blue", "green",
                                                          "tan", "cream", "red"))


def test_curation_run_writes_valid_records_resumes_and_skips(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png", "c.jpg"):
        Image.new("RGB", (40, 20), (10, 200, 10)).save(root / name)
    (root / "broken.jpg").write_bytes(b"not an image")
    images = find_images(root)
    assert images == ["a.jpg", "broken.jpg", "c.jpg", "sub/b.png"]
    output = tmp_path / "curated.jsonl"
    stages = (FakeCaptioner(), SpacyExpressionParser(parsed), fake_grounder, fake_negatives)
    with pytest.raises(ValueError, match=r"broken\.jpg: "):
        curate(images, root, output, *stages, progress=False)
    stats = curate(images, root, output, *stages, skip_errors=True, progress=False)
    assert (stats.written, stats.already_done, sum(stats.skipped.values())) == (2, 1, 1)  # a.jpg was written first

    records = list(FineHARDReader(output))
    assert [r.f_path for r in records] == ["a.jpg", "c.jpg", "sub/b.png"]
    first = records[0]
    assert first.caption == CAPTION and first.short_caption == "a photo of a dog"
    assert [(r.short_expr, r.long_expr, r.score) for r in first.regions] == [
        ("A black dog", "A black dog seen closely", 0.9), ("the wooden bench", "the wooden bench seen closely", 0.7)]
    assert first.regions[0].box == (0.0, 0.0, 0.5, 0.5) and first.regions[1].box == (0.5, 0.0, 1.0, 1.0)
    assert first.regions[0].negatives[0] == "a white dog" and first.regions[1].negatives is None

    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:2]) + lines[2][:25])  # a crash in the middle of the last record
    again = curate(images, root, output, *stages, skip_errors=True, progress=False)
    assert (again.written, again.already_done) == (1, 2)
    assert [json.loads(line)["f_path"] for line in output.read_text().splitlines()] == ["a.jpg", "c.jpg", "sub/b.png"]


def test_images_without_a_valid_region_are_skipped_and_inverted_boxes_counted(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (40, 20), (10, 200, 10)).save(root / name)

    inverted = Detection((30, 15, 10, 5), 0.95, 1)
    answers = iter([[Detection((0, 0, 20, 10), 0.9, 0), inverted], [inverted]])  # a.jpg, then b.jpg

    def grounder(image, queries):
        return next(answers)

    output = tmp_path / "curated.jsonl"
    stats = curate(["a.jpg", "b.jpg"], root, output, FakeCaptioner(), SpacyExpressionParser(parsed), grounder,
                   fake_negatives, progress=False)
    assert [json.loads(line)["f_path"] for line in output.read_text().splitlines()] == ["a.jpg"]
    assert (stats.written, dict(stats.skipped), dict(stats.dropped_boxes)) == (
        1, {"no valid region": 1}, {"inverted box": 2})
    assert stats.summary() == ("wrote 1 records (1 regions, 1 with negatives), 0 already done, skipped 1 "
                               "(no valid region: 1), dropped 2 detector boxes (inverted box: 2)")


def test_curation_command_shards_the_folder(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("curate_finehard", REPO / "tools" / "curate_finehard.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "VLMCaptioner", lambda model, device=None: FakeCaptioner())
    monkeypatch.setattr(tool, "SpacyExpressionParser", lambda nlp, max_expressions=None: SpacyExpressionParser(parsed))
    monkeypatch.setattr(tool, "PipelineGrounder", lambda model, device=None: fake_grounder)
    monkeypatch.setattr(tool, "LLMNegativeWriter", lambda model, device=None: fake_negatives)
    for index in range(5):
        Image.new("RGB", (30, 30)).save(tmp_path / f"{index}.png")
    assert tool.main(["--images", str(tmp_path), "--output", str(tmp_path / "out.jsonl"), "--shard", "1/2",
                      "--no-region-descriptions"]) == 0
    records = list(FineHARDReader(tmp_path / "out.jsonl"))
    assert [record.f_path for record in records] == ["1.png", "3.png"]
    assert records[0].regions[0].long_expr == "A black dog with a red collar"  # the parse subtree
    assert "wrote 2 records" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main(["--images", str(tmp_path), "--output", "x.jsonl", "--shard", "2/2"])


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_curation_command_checks_its_image_folder_before_loading_models(folder, tmp_path, monkeypatch, capsys):
    """A missing or image-less --images folder is one error line; no model is constructed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("curate_finehard", REPO / "tools" / "curate_finehard.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    loaded = []
    for name in ("VLMCaptioner", "SpacyExpressionParser", "PipelineGrounder", "LLMNegativeWriter"):
        monkeypatch.setattr(tool, name, lambda *args, name=name, **kwargs: loaded.append(name))
    images = tmp_path / folder
    if folder == "empty":
        images.mkdir()
        (images / "notes.txt").write_text("no images here")
    status = run_command(tool.main, ["--images", str(images), "--output", str(tmp_path / "out.jsonl")])
    what = "image folder not found" if folder == "missing" else "no image files in this folder (searched recursively)"
    assert status == 2 and loaded == []
    assert capsys.readouterr().err == f"error: {images}: --images: {what}\n"
