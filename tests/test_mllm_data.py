"""LLaVA-1.5 training data token for token: ``mllm.data`` against values printed by the official code.

``tests/data/mllm/llava_c121f04.json`` holds records, and the ``input_ids`` / ``labels`` /
``attention_mask`` that haotian-liu/LLaVA at commit c121f04 (``llava/train/train.py``,
``llava/mm_utils.py``, ``llava/conversation.py``, ``llava/model/llava_arch.py``; its field
"source" says how they were run) gave for them with the LLaMA-style sentencepiece tokenizer
``tests/data/mllm/vicuna`` (450 pieces, byte fallback, split digits, ``▁`` = 396, newline = 13),
plus the pixels of its image path. Image positions are written -200 there.
"""
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPVisionConfig, LlavaImageProcessorPil

from mllm import build_processor, prepare_tokenizer
from mllm.builder import load_language_tokenizer, load_processor
from mllm.data import (
    IGNORE_INDEX,
    ConversationCollator,
    ConversationDataset,
    LlavaTokenization,
    RecordError,
    get_format,
)

DATA = Path(__file__).resolve().parent / "data" / "mllm"
OFFICIAL = json.loads((DATA / "llava_c121f04.json").read_text())
IMAGE_TOKENS = OFFICIAL["image_tokens"]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SPACE, NEWLINE = 396, 13  # "▁" and "<0x0A>" of the test tokenizer
CASES = {f"{case['name']}-legacy-{case['legacy']}": case for case in OFFICIAL["cases"]}


def vicuna_tokenizer(tmp_path, legacy):
    """The shipped tokenizer directory with ``legacy`` set (None: the field left out), loaded and
    prepared as mllm loads a language model's tokenizer."""
    directory = tmp_path / f"vicuna-legacy-{legacy}"
    shutil.copytree(DATA / "vicuna", directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("legacy")
    (directory / "tokenizer_config.json").write_text(json.dumps(config | ({} if legacy is None else {"legacy": legacy})))
    return load_language_tokenizer(directory)


def image_processor(size=10):
    return LlavaImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  image_mean=CLIP_MEAN, image_std=CLIP_STD)


def case_dataset(case, tmp_path, tokenizer=None, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "records.json"
    path.write_text(json.dumps(case["records"]))
    tokenizer = tokenizer or vicuna_tokenizer(tmp_path, case["legacy"])
    aspect = "square" if case["format"] == "plain" else "pad"  # as LLaVA-1.5's two scripts
    return ConversationDataset(path, tokenizer, image_processor(), IMAGE_TOKENS, DATA, case["format"],
                               case["max_length"], image_aspect_ratio=aspect, **kwargs)


def with_slots(ids, tokenizer):
    return [-200 if token == tokenizer.convert_tokens_to_ids("<image>") else token for token in ids.tolist()]


def without_cut_image(expected):
    """The official sequence without an image that truncation cut (fewer than all its features, at
    the end): ours drops such an image with its placeholders, which changes no loss term."""
    ids, labels = expected["input_ids"], expected["labels"]
    kept = len(ids)
    while kept and ids[kept - 1] == -200:
        kept -= 1
    if 0 < ids.count(-200) < IMAGE_TOKENS:
        assert ids.count(-200) == len(ids) - kept, "a cut image is at the end"
        return ids[:kept], labels[:kept], True
    return ids, labels, False


@pytest.mark.parametrize("name", sorted(CASES))
def test_ids_labels_and_attention_masks_equal_llava(name, tmp_path):
    case = CASES[name]
    dataset = case_dataset(case, tmp_path)
    items = [dataset[index] for index in range(len(dataset))]
    cut_any = False
    for record, item, expected in zip(case["records"], items, case["expected"]):
        ids, labels, cut = without_cut_image(expected)
        assert with_slots(item["input_ids"], dataset.tokenization.tokenizer) == ids, record["id"]
        assert item["labels"].tolist() == labels, record["id"]
        assert ("pixel_values" in item) == ("image" in record and not cut), record["id"]
        cut_any |= cut
    batch = ConversationCollator(dataset.tokenization.pad_token_id)(items)
    official_masks = torch.tensor([expected["attention_mask"] for expected in case["expected"]])
    if not cut_any:
        assert torch.equal(batch["attention_mask"], official_masks)
        assert torch.equal(batch["labels"], torch.tensor([expected["labels"] + [IGNORE_INDEX] * (
            official_masks.shape[1] - len(expected["labels"])) for expected in case["expected"]]))
    for row, item in enumerate(items):
        length = len(item["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)


def targets(item):
    return item["input_ids"][item["labels"] != IGNORE_INDEX].tolist()


def test_llava_token_patterns_read_from_the_official_values(tmp_path):
    """What the cases above pin down, spelled out on a few records (legacy=False, as Vicuna)."""
    dataset = case_dataset(CASES["v1-legacy-False"], tmp_path)
    tokenizer = dataset.tokenization.tokenizer
    image_first = dataset[0]["input_ids"].tolist()
    start = image_first.index(tokenizer.convert_tokens_to_ids("<image>"))
    # "USER: " + "<image>" + "\n..." tokenized in pieces: ▁, image, ▁, newline (LLaMA: 29871, -200, 29871, 13)
    assert image_first[start - 1] == SPACE
    assert image_first[start + IMAGE_TOKENS : start + IMAGE_TOKENS + 2] == [SPACE, NEWLINE]
    # answers "red" / "2 squares.": the lone ▁ before the digit is a target, the first "▁red" is one piece
    multi_turn = dataset[1]
    answer_2 = tokenizer("2 squares.")["input_ids"][1:]
    assert answer_2[0] == SPACE
    assert targets(multi_turn) == tokenizer("red")["input_ids"][1:] + [2] + answer_2 + [2]
    # " No" and "\nA red square.": a space or newline first gives ▁ targets too
    assert tokenizer.convert_ids_to_tokens(targets(dataset[3]))[:3] == ["▁", "▁No", "</s>"]
    # an empty answer: LLaVA's count mismatches and ignores the whole record
    assert targets(dataset[4]) == []


def test_plain_caption_starts_with_its_word_boundary_for_both_legacy_settings(tmp_path):
    for legacy in (False, True):
        dataset = case_dataset(CASES[f"plain-legacy-{legacy}"], tmp_path / str(legacy))
        tokenizer = dataset.tokenization.tokenizer
        assert tokenizer.convert_ids_to_tokens(targets(dataset[0]))[:2] == ["▁a", "▁red"]


def test_records_without_targets_are_kept_counted_and_reported(tmp_path, caplog):
    dataset = case_dataset(CASES["v1-legacy-False"], tmp_path)
    assert dataset.without_targets == {"masked": [4, 7], "truncated": [], "image cut": []}
    assert "2 of 8 records have no target token" in caplog.text and "id 'empty-answer'" in caplog.text
    assert all(targets(dataset[index]) == [] for index in (4, 7))
    cut = case_dataset(CASES["v1-image-cut-legacy-False"], tmp_path / "cut")
    assert cut.without_targets == {"masked": [], "truncated": [1], "image cut": [0]}
    assert "2 masked" not in cut.summary() and "1 image cut" in cut.summary()
    second_turn = case_dataset(CASES["v1-image-cut-second-turn-legacy-False"], tmp_path / "second")
    assert second_turn.count_without_targets == 0  # "Hello!</s>" is left before the cut image
    assert "pixel_values" not in second_turn[0]


@pytest.mark.parametrize("name, message", [
    ("v1-legacy-False", r"record 4 \(id 'empty-answer'\): conversations\[1\]: empty answer"),
    ("v1-truncated-legacy-False",
     r"record 0 \(id 'long-question'\): conversations: no answer token is left within model_max_length=100"),
    ("plain-image-cut-legacy-False",
     r"record 0 \(id 'image-cut'\): image: its 4 placeholders do not fit in model_max_length=3"),
])
def test_strict_refuses_records_without_targets_when_indexing(name, message, tmp_path):
    with pytest.raises(RecordError, match=r"records\.json: " + message):
        case_dataset(CASES[name], tmp_path, strict=True)


@pytest.mark.parametrize("key", sorted(OFFICIAL["pixels"]))
def test_pixels_equal_llava(key, tmp_path):
    """Stage 1 (``square``): resize + centre crop; stage 2 (``pad``): expand2square with the mean colour first."""
    aspect, name = key.split("/")
    record = {"id": "p", "image": name, "conversations": [{"from": "human", "value": "<image>"},
                                                         {"from": "gpt", "value": "a"}]}
    path = tmp_path / "records.json"
    path.write_text(json.dumps([record]))
    dataset = ConversationDataset(path, vicuna_tokenizer(tmp_path, False), image_processor(), IMAGE_TOKENS, DATA,
                                  "plain", image_aspect_ratio=aspect)
    expected = torch.tensor(OFFICIAL["pixels"][key]).view(3, 10, 10)
    torch.testing.assert_close(dataset[0]["pixel_values"], expected, atol=2e-6, rtol=0)


def test_pieces_tokenize_as_sentencepiece_itself(tmp_path):
    """Each piece as LLaVA's slow tokenizer: BOS + sentencepiece ids, leading spaces included
    (transformers 5's Metaspace alone drops the "▁" sentencepiece puts before " 5")."""
    model = sentencepiece.SentencePieceProcessor(model_file=str(DATA / "vicuna" / "tokenizer.model"))
    tokenization = LlavaTokenization(vicuna_tokenizer(tmp_path, False), IMAGE_TOKENS, None)
    texts = [" 5", "  two spaces", "\nWhat", "2 squares.", "red", "a  b", " ASSISTANT: a", "", "  ", "a\n\n b",
             "tab\there", "12345", "héllo wörld ☃", "The US ER BUSER"]
    for text in texts:
        assert tokenization.ids(text) == [1, *model.encode(text)], repr(text)
    assert tokenization.ids("x <image>\nq") == [1, *model.encode("x "), -200, *model.encode("\nq")]


def test_vicuna_style_tokenizer_loads_from_its_sentencepiece_model(tmp_path):
    """A directory holding only ``tokenizer.model`` and ``tokenizer_config.json`` (the mllm extra
    installs sentencepiece and protobuf, which the conversion needs)."""
    assert sorted(path.name for path in (DATA / "vicuna").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    tokenizer = AutoTokenizer.from_pretrained(DATA / "vicuna")
    assert type(tokenizer).__name__ == "LlamaTokenizer" and tokenizer.legacy is False
    assert len(tokenizer) == 450
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, SPACE, NEWLINE]) == ["<unk>", "<s>", "</s>", "▁", "<0x0A>"]


def test_a_config_without_legacy_reads_as_llava_reads_it_and_the_log_says_so(tmp_path, caplog):
    """LLaVA's transformers 4.37 makes an unset ``legacy`` True (its slow LlamaTokenizer printed
    ``['▁a', '</s>', '▁US', 'ER']`` for "a</s>USER" with this config, and preprocess_v1 the ids and labels
    of case v1 with legacy null); transformers 5 would make it False."""
    tokenizer = vicuna_tokenizer(tmp_path, None)
    assert tokenizer.legacy is True and tokenizer.tokenize("a</s>USER") == ["▁a", "</s>", "▁US", "ER"]
    [line] = [record.message for record in caplog.records if "'legacy'" in record.message]
    assert line == (f"{tmp_path / 'vicuna-legacy-None' / 'tokenizer_config.json'}: no 'legacy' field; read as "
                    "legacy=True, as LLaVA's transformers 4.37 reads it (transformers 5 alone would make it False)")
    case = CASES["v1-legacy-None"]
    dataset = case_dataset(case, tmp_path, tokenizer)
    for index, expected in enumerate(case["expected"]):
        assert with_slots(dataset[index]["input_ids"], tokenizer) == expected["input_ids"]
        assert dataset[index]["labels"].tolist() == expected["labels"]


@pytest.mark.parametrize("legacy", [False, True, None])
def test_llavas_tokenization_mismatch_warnings_with_its_numbers(legacy, tmp_path, caplog):
    """An empty answer, first or last: preprocess_v1 printed "WARNING: tokenization mismatch: A vs. B.
    (ignored)" and masked the whole record; the dataset logs the same numbers and masks it too."""
    case = CASES[f"v1-legacy-{legacy}"]
    dataset = case_dataset(case, tmp_path)
    official = OFFICIAL["mismatch_warnings"][str(legacy)]
    ours = {}
    for record in caplog.records:
        if "tokenization mismatch" in record.message:
            record_id = record.message.split("(id '", 1)[1].split("'", 1)[0]
            ours[record_id] = "WARNING: " + record.message.split("): ", 1)[1].split(" - ", 1)[0]
    assert ours == official
    for index, record in enumerate(case["records"]):
        if record["id"] in official:
            assert targets(dataset[index]) == [] and index in dataset.without_targets["masked"]


@pytest.mark.parametrize("legacy", [False, True])
def test_legacy_survives_processor_save_and_reload(legacy, tmp_path):
    """Between the stages the processor is saved and reloaded; ``legacy`` and the PIL image processor stay."""
    tower = CLIPVisionConfig(image_size=32, patch_size=8)
    processor = build_processor(vicuna_tokenizer(tmp_path, legacy), tower, tuple(CLIP_MEAN), tuple(CLIP_STD))
    processor.save_pretrained(tmp_path / "saved")
    reloaded = load_processor(tmp_path / "saved")
    assert reloaded.tokenizer.legacy is legacy
    text = get_format("v1").render([("q", "a"), ("r", "b")])  # "...a</s>USER: r..."
    assert reloaded.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert ("▁US" in reloaded.tokenizer.tokenize("a</s>USER")) is legacy
    assert type(reloaded.image_processor).__name__ == "LlavaImageProcessorPil"
    image = Image.open(DATA / "wide.png")
    assert torch.equal(reloaded.image_processor(image, return_tensors="pt")["pixel_values"],
                       processor.image_processor(image, return_tensors="pt")["pixel_values"])
