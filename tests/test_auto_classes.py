"""Both families through transformers' Auto classes and the zero-shot-image-classification pipeline: a
directory written by our ``save_pretrained`` loads with ``AutoProcessor`` / ``AutoModel`` as the family's
classes, directories of fgclip < 0.2 and the official layout keep loading, and the pipeline's scores are
the softmax of ``logits_per_image``."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

from fgclip import FGCLIP2Model, FGCLIP2Processor, FGCLIPModel, FGCLIPProcessor
from fgclip.errors import CheckpointError
from fgclip.testing import tiny_config, tiny_fgclip2_config, tiny_word_tokenizer

LABELS = ["cat", "red square", "blue circle"]
TEMPLATE = "a photo of a {}."
WORDS = "a photo of cat red square blue circle two dogs".split()
TEXTS = ["a photo of a cat", "A Red square and a BLUE circle"]


def tiny_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(23, 37), (64, 80)]]


def boxes() -> list[torch.Tensor]:
    return [torch.tensor([[1.0, 2.0, 20.0, 15.0]]), torch.tensor([[0.0, 0.0, 80.0, 64.0], [10, 10, 30, 40]])]


def build(family: str):
    torch.manual_seed(0)
    if family == "fgclip":
        model = FGCLIPModel(tiny_config())
        return model.eval(), FGCLIPProcessor.for_config(model.config)
    model = FGCLIP2Model(tiny_fgclip2_config())
    return model.eval(), FGCLIP2Processor.for_config(model.config, tiny_word_tokenizer(WORDS))


@pytest.fixture(scope="module", params=["fgclip", "fgclip2"])
def saved(request, tmp_path_factory):
    """(family, model, processor, directory) of a tiny model and processor saved with ``save_pretrained``."""
    model, processor = build(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return request.param, model, processor, directory


def assert_same_batch(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)
        elif isinstance(value, list):
            assert len(actual[key]) == len(value)
            for got, want in zip(actual[key], value):
                torch.testing.assert_close(got, want, rtol=0, atol=0, msg=key)
        else:
            assert actual[key] == value, key


def calls(processor):
    images = tiny_images()
    yield processor(images=images, text=TEXTS, boxes=boxes())
    yield processor(text=TEXTS, text_kind="long")
    yield processor(images=images, text=TEXTS, text_kind="region")


def test_saved_layout_is_transformers(saved):
    family, _, processor, directory = saved
    config = json.loads((directory / "processor_config.json").read_text())
    assert config["processor_class"] == type(processor).__name__
    assert config["image_processor"]["image_processor_type"] in ("CLIPImageProcessor", "Siglip2ImageProcessor")
    assert config["short_length"] == processor.short_length and config["long_length"] == processor.long_length
    assert (directory / "tokenizer_config.json").is_file() and not (directory / "fgclip_processor.json").exists()
    if family == "fgclip2":  # the official layout's file, for the official code
        assert json.loads((directory / "preprocessor_config.json").read_text())["dynamic_max_patches"] is False


def test_auto_processor_returns_the_family_processor_with_equal_batches(saved):
    _, _, processor, directory = saved
    loaded = AutoProcessor.from_pretrained(directory)
    assert type(loaded) is type(processor)
    family_loaded = type(processor).from_pretrained(directory)
    for got, from_family, original in zip(calls(loaded), calls(family_loaded), calls(processor)):
        assert_same_batch(got, from_family)
        if isinstance(processor, FGCLIPProcessor):  # FG-CLIP 2's from_pretrained takes the "auto" budget
            assert_same_batch(got, original)


def test_round_trip_keeps_the_settings(saved, tmp_path):
    family, _, processor, _ = saved
    options = {"resize_mode": "pad"} if family == "fgclip" else {"max_num_patches": 8, "budget_scope": "image",
                                                                  "lowercase": False}
    changed = type(processor)(processor.tokenizer, processor.image_processor, **options,
                              short_length=processor.short_length, long_length=processor.long_length)
    changed.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, **({"max_num_patches": None} if family == "fgclip2" else {}))
    for key, value in options.items():
        assert getattr(loaded, key) == value
    for got, want in zip(calls(loaded), calls(changed)):
        assert_same_batch(got, want)


def test_auto_model_returns_the_family_model(saved):
    _, model, processor, directory = saved
    loaded = AutoModel.from_pretrained(directory).eval()
    assert type(loaded) is type(model)
    batch = processor(images=tiny_images(), text=TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits_per_image, model(**batch).logits_per_image)


def test_pipeline_scores_are_the_softmax_of_logits_per_image(saved):
    """FG-CLIP: the pipeline's scores are softmax(logits_per_image) of the family processor's batch. FG-CLIP 2:
    the pipeline applies softmax too (its model type does not contain "siglip", so it does not take the sigmoid),
    on the inputs it builds itself: its image processor (saved budget), its tokenizer padding to the longest
    text and no lower-casing, which the pipeline gives no way to change."""
    family, model, processor, directory = saved
    classifier = pipeline("zero-shot-image-classification", model=str(directory))
    assert type(classifier.model) is type(model)
    texts = [TEMPLATE.format(label) for label in LABELS]
    for image in tiny_images():
        results = classifier(image, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
        scores = torch.tensor([next(r["score"] for r in results if r["label"] == label) for label in LABELS])
        if family == "fgclip":
            batch = processor(images=[image], text=texts)
        else:
            batch = {**classifier.image_processor(images=[image], return_tensors="pt"),
                     **classifier.tokenizer(texts, padding=True, return_tensors="pt")}
        with torch.no_grad():
            expected = model(**batch).logits_per_image[0].softmax(-1)
        torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ directories of fgclip < 0.2
def save_like_fgclip_0_1(processor, directory) -> None:
    """What ``save_pretrained`` wrote before 0.2: the tokenizer, ``preprocessor_config.json`` and FG-CLIP's
    ``fgclip_processor.json`` (FG-CLIP 2: ``dynamic_max_patches`` in ``preprocessor_config.json``)."""
    processor.tokenizer.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)
    if isinstance(processor, FGCLIPProcessor):
        settings = {"image_size": processor.image_size, "short_length": processor.short_length,
                    "long_length": processor.long_length, "resize_mode": processor.resize_mode}
        (directory / "fgclip_processor.json").write_text(json.dumps(settings, indent=2) + "\n")
    else:
        config_file = directory / "preprocessor_config.json"
        config = json.loads(config_file.read_text())
        config["dynamic_max_patches"] = processor.max_num_patches == "auto"
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


@pytest.mark.parametrize("family", ["fgclip", "fgclip2"])
def test_directories_of_fgclip_0_1_keep_loading(family, tmp_path):
    model, processor = build(family)
    model.save_pretrained(tmp_path)
    save_like_fgclip_0_1(processor, tmp_path)
    saved_budget = {"max_num_patches": None} if family == "fgclip2" else {}  # FG-CLIP 2 defaults to "auto"
    auto, family_loaded = AutoProcessor.from_pretrained(tmp_path), type(processor).from_pretrained(tmp_path)
    assert type(auto) is type(processor)
    for got, want in zip(calls(auto), calls(family_loaded)):
        assert_same_batch(got, want)
    for got, want in zip(calls(type(processor).from_pretrained(tmp_path, **saved_budget)), calls(processor)):
        assert_same_batch(got, want)


def test_unreadable_fgclip_0_1_processor_names_the_file_to_re_save(tmp_path):
    _, processor = build("fgclip")
    save_like_fgclip_0_1(processor, tmp_path)
    (tmp_path / "fgclip_processor.json").write_text('{"image_size": 32,')  # cut short
    with pytest.raises(CheckpointError, match=r"fgclip_processor\.json: .*re-save") as error:
        FGCLIPProcessor.from_pretrained(tmp_path)
    assert "\n" not in str(error.value)
