"""FG-CLIP 2 against values computed with the official code (360CVGroup/FG-CLIP b1af1cd, fgclip2/, run with
transformers 4.56.2) on a tiny random checkpoint the official ``FG_CLIP2_Model.save_pretrained`` wrote:
tests/data/fgclip2_official (see its README). Pre-processing must be equal (PIL resizing, the official
budget rule); features within float32 noise."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fgclip import FGCLIP2Model, FGCLIP2Processor
from fgclip.processing_fgclip2 import load_image_processor
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

DATA = Path(__file__).parent / "data" / "fgclip2_official"


@pytest.fixture(scope="module")
def expected():
    return load_file(DATA / "expected.safetensors")


@pytest.fixture(scope="module")
def meta():
    return json.loads((DATA / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model():
    return FGCLIP2Model.from_pretrained(DATA).eval()


@pytest.fixture(scope="module")
def processor():
    return FGCLIP2Processor.from_pretrained(DATA)


def image_terms(model, batch) -> int:
    return tower_terms(model.config.vision_config, batch["pixel_values"].shape[1])


def region_terms(model, batch) -> int:
    """The image tower, then bilinear interpolation (4 terms) at up to one sample per patch, and their mean."""
    return image_terms(model, batch) + 5 * batch["pixel_values"].shape[1]


def images(indices):
    return [Image.open(DATA / "images" / f"{index}.png").convert("RGB") for index in indices]


# ---------------------------------------------------------------------------------------- pre-processing
def test_preprocessor_config_read_as_the_official_processor(processor):
    image_processor, budget = load_image_processor(DATA)
    assert budget == "auto"  # no dynamic_max_patches key: the official default is True
    assert image_processor.patch_size == 4 and image_processor.resample == 2
    assert processor.max_num_patches == "auto" and processor.budget_scope == "call"


@pytest.mark.parametrize("index", range(5))
def test_single_image_pixels_and_grid_equal_the_official(processor, expected, index):
    batch = processor(images=images([index]))
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        reference = expected[f"single{index}.{key}"]
        assert batch[key].shape == reference.shape, key
        torch.testing.assert_close(batch[key].to(reference.dtype), reference, rtol=0, atol=0)


def test_mixed_batch_takes_the_largest_budget_as_the_official(processor, expected):
    batch = processor(images=images([0, 1, 2]))
    assert batch["pixel_values"].shape[1] == 576  # images 0 and 2 alone take 128
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        torch.testing.assert_close(batch[key].to(expected[f"mixed.{key}"].dtype), expected[f"mixed.{key}"],
                                   rtol=0, atol=0)
    per_image = processor(images=images([0, 1, 2]), budget_scope="image")
    assert not torch.equal(per_image["spatial_shapes"], expected["mixed.spatial_shapes"])
    torch.testing.assert_close(per_image["spatial_shapes"][0], expected["single0.spatial_shapes"][0], rtol=0, atol=0)


def test_preprocessor_config_without_dynamic_budget(tmp_path):
    config = json.loads((DATA / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "dynamic_max_patches": False,
                                                                   "max_num_patches": 64, "image_mean": [0.0] * 3}))
    image_processor, budget = load_image_processor(tmp_path)
    assert budget == 64 and list(image_processor.image_mean) == [0.0] * 3


def test_saved_processor_round_trip_keeps_the_budget(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["dynamic_max_patches"] is True and saved["patch_size"] == 4
    fixed = FGCLIP2Processor.from_pretrained(DATA, max_num_patches=128)
    fixed.save_pretrained(tmp_path / "fixed")
    assert FGCLIP2Processor.from_pretrained(tmp_path / "fixed", max_num_patches=None).max_num_patches == 128


# ---------------------------------------------------------------------------------------- checkpoint
def test_official_checkpoint_loads_every_weight_and_the_temperatures(model, tmp_path):
    config = json.loads((DATA / "config.json").read_text())
    assert "region_temperatures" not in config  # written by the official code
    stored = load_file(DATA / "model.safetensors")
    state = model.state_dict()
    assert set(stored) == set(state)
    for key, value in stored.items():
        assert state[key].shape == value.shape, key
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert model.logit_scale_finegraind.item() == pytest.approx(4.6052)
    assert model.longtext_head.weight.shape == model.boxtext_head.weight.shape == (32, 32)
    model.save_pretrained(tmp_path)
    again = load_file(tmp_path / "model.safetensors")
    assert set(again) == set(stored)
    assert again["logit_scale_hardneg"].item() == pytest.approx(4.6052)
    as_bin = tmp_path / "bin"  # the same weights as pytorch_model.bin
    as_bin.mkdir()
    torch.save(stored, as_bin / "pytorch_model.bin")
    (as_bin / "config.json").write_text((DATA / "config.json").read_text())
    assert FGCLIP2Model.from_pretrained(as_bin).logit_scale_finegraind.item() == pytest.approx(4.6052)


# ---------------------------------------------------------------------------------------- features
def test_image_features_single_and_mixed(model, processor, expected):
    with torch.no_grad():
        for index in range(5):
            batch = processor(images=images([index]))
            assert_close_to_reference(model.get_image_features(**batch), expected[f"single{index}.image_embeds"],
                                      terms=image_terms(model, batch))
        batch = processor(images=images([0, 1, 2]))
        assert_close_to_reference(model.get_image_features(**batch), expected["mixed.image_embeds"],
                                  terms=image_terms(model, batch))


def test_dense_features_both_spellings(model, processor, expected):
    batch = processor(images=images([0, 1, 2]))
    with torch.no_grad():
        ours, official = model.get_dense_features(**batch), model.get_image_dense_feature(**batch)
    torch.testing.assert_close(official, ours, rtol=0, atol=0)
    for row, (h, w) in enumerate(batch["spatial_shapes"].tolist()):  # padding rows are not features
        assert_close_to_reference(ours[row, : h * w], expected["mixed.dense"][row, : h * w],
                                  terms=image_terms(model, batch))


def test_region_features_from_original_pixels_and_from_processor_boxes(model, processor, expected, meta):
    pictures = images([0, 1, 2])
    sizes = [(picture.height, picture.width) for picture in pictures]
    regions = meta["regions"]
    batch = processor(images=pictures)
    with torch.no_grad():
        official = model.get_image_region_features(**batch, image_sizes=sizes, region_infos=regions)
        mapped = model.get_region_features(**processor(images=pictures, boxes=[torch.tensor(r) for r in regions]))
        assert model.get_image_region_features(**batch, image_sizes=sizes, region_infos=[]) == []
        empty = model.get_image_region_features(**batch, image_sizes=sizes, region_infos=[regions[0], [], regions[2]])
    assert [len(r) for r in empty] == [2, 0, 1]
    for index, features in enumerate(official):
        assert_close_to_reference(features, expected[f"mixed.regions{index}"], terms=region_terms(model, batch))
    assert_close_to_reference(mapped, torch.cat(official), terms=region_terms(model, batch))


@pytest.mark.parametrize("name, kind, walk_type, length, source", [
    ("short", "short", "short", None, "texts"),
    ("box", "region", "box", None, "texts"),
    ("long", "long", "long", None, "long_texts"),
    ("long64", "long", "long", 64, "long_texts"),
])
def test_text_features_both_spellings(model, processor, expected, meta, name, kind, walk_type, length, source):
    batch = processor(text=meta[source], text_kind=kind, max_length=length, lowercase=False)  # the scripts keep case
    torch.testing.assert_close(batch["input_ids"], expected[f"text.{name}.input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(batch["attention_mask"], expected[f"text.{name}.attention_mask"], rtol=0, atol=0)
    with torch.no_grad():
        ours = model.get_text_features(**batch)
        official = model.get_text_features(batch["input_ids"], batch["attention_mask"], walk_type=walk_type)
    assert_close_to_reference(ours, expected[f"text.{name}.embeds"],
                              terms=tower_terms(model.config.text_config, batch["input_ids"].shape[1]))
    torch.testing.assert_close(official, ours, rtol=0, atol=0)


def test_lowercasing_is_ours_by_default(processor, meta, expected):
    lowered = processor(text=meta["texts"])["input_ids"]
    kept = expected["text.short.input_ids"]
    assert torch.equal(lowered[[0, 1, 3]], kept[[0, 1, 3]]) and not torch.equal(lowered[2], kept[2])  # "RED car"


def test_forward_logits_box_path(model, processor, expected, meta):
    batch = processor(images=images([0, 1, 2]), text=meta["texts"], text_kind="region", lowercase=False)
    del batch["attention_mask"]  # the reference forward was called with input ids alone (every token attended)
    with torch.no_grad():
        logits = model(**batch).logits_per_image
        official = model(**{**batch, "text_kind": "short"}, walk_type="box").logits_per_image
    terms = image_terms(model, batch) + tower_terms(model.config.text_config, batch["input_ids"].shape[1])
    scale = model.logit_scale.exp().item() + abs(model.logit_bias.item())  # logits: scale x cosine + bias
    assert_close_to_reference(logits, expected["forward.box.logits_per_image"], terms=terms, scale=scale)
    torch.testing.assert_close(official, logits, rtol=0, atol=0)
