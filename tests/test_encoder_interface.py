"""One API for both model families: the same calls on a tiny random FG-CLIP and FG-CLIP 2, each checked
against an independent reference (transformers' own hidden states, closed-form RoIAlign cases, the
logits written out), the call styles removed in 0.2.0 failing loudly, and loading by type detection."""
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature, CLIPConfig, CLIPModel

from fgclip import FGCLIP2Model, FGCLIP2Processor, FGCLIPModel, FGCLIPProcessor
from fgclip.encoders import Encoder, detect_model_type, load_encoder
from fgclip.testing import tiny_config, tiny_fgclip2_config, tiny_word_tokenizer
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

WORDS = "a red car blue bird on the green grass small wooden chair with metal legs".split()
TEXTS = ["a red car", "a small wooden chair with metal legs"]


def family(name):
    torch.manual_seed(0)
    if name == "fgclip":
        config = tiny_config()
        return FGCLIPModel(config).eval(), FGCLIPProcessor.for_config(config)
    config = tiny_fgclip2_config(vocab_size=len(WORDS) + 8)
    return FGCLIP2Model(config).eval(), FGCLIP2Processor.for_config(config, tiny_word_tokenizer(WORDS))


@pytest.fixture(scope="module", params=["fgclip", "fgclip2"])
def pair(request):
    return family(request.param)


def images():
    generator = torch.Generator().manual_seed(1)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
            for h, w in ((40, 24), (32, 32))]


def test_processor_returns_one_batch_feature(pair):
    model, processor = pair
    boxes = [torch.tensor([[0.0, 0.0, 24.0, 40.0]]), torch.tensor([[8.0, 8.0, 16.0, 24.0], [0.0, 0.0, 4.0, 4.0]])]
    batch = processor(images=images(), text=TEXTS, boxes=boxes, text_kind="long")
    assert isinstance(batch, BatchFeature)
    assert {"pixel_values", "boxes", "input_ids", "attention_mask", "text_kind"} <= set(batch)
    assert batch["text_kind"] == "long" and batch["input_ids"].shape == (2, processor.max_length("long"))
    assert [tuple(b.shape) for b in batch["boxes"]] == [(1, 4), (2, 4)]
    # the whole-image box of image 0 maps onto the whole model input of image 0
    height, width = batch["pixel_values"].shape[-2:] if batch["pixel_values"].ndim == 4 else \
        (batch["spatial_shapes"][0] * model.config.vision_config.patch_size).tolist()
    torch.testing.assert_close(batch["boxes"][0], torch.tensor([[0.0, 0.0, float(width), float(height)]]))
    with pytest.raises(ValueError, match="give images, text or both"):
        processor()


def test_every_feature_method_takes_the_batch(pair):
    model, processor = pair
    full = [torch.tensor([[0.0, 0.0, 24.0, 40.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    batch = processor(images=images(), text=TEXTS, boxes=full)
    with torch.no_grad():
        output = model.encode_image(**batch, dense=True)
        image = model.get_image_features(**batch)
        text = model.get_text_features(**batch)
        regions = model.get_region_features(**batch)
        dense = model.get_dense_features(**batch)
        logits = model(**batch).logits_per_text
    torch.testing.assert_close(image, output.image_embeds)
    torch.testing.assert_close(dense, output.dense_features)
    maps = model.dense_maps(output)
    # a whole-image box pools the mean of the image's patch features (RoIAlign 1x1, aligned): bilinear
    # interpolation (4 terms) at up to one sample per cell, and their mean
    cells = max(m.shape[0] * m.shape[1] for m in maps)
    assert_close_to_reference(regions, torch.stack([m.mean((0, 1)) for m in maps]), terms=5 * cells)
    bias = model.global_logit_parameters().get("logit_bias", torch.tensor(0.0))
    expected = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T * model.logit_scale.exp() + bias
    # the normalisations, the products, the scale and the bias; the bias cancels the products in part
    scale = model.logit_scale.exp().item() + abs(bias.item())
    assert_close_to_reference(logits, expected, terms=3 * text.shape[-1] + 2, scale=scale)
    with pytest.raises(TypeError, match="unexpected keyword argument.*pixel_value"):
        model.get_image_features(**batch, pixel_value=batch["pixel_values"])


def test_vision_hidden_states_equal_transformers_own(pair):
    model, processor = pair
    batch = processor(images=images())
    image_keys = {key: value for key, value in batch.items() if key != "boxes"}
    with torch.no_grad():
        ours = model.vision_hidden_states(**image_keys, layers=[0])
        reference = model.vision_model(**image_keys, output_hidden_states=True).hidden_states[1]
    first_patch = 1 if isinstance(model, FGCLIPModel) else 0  # CLIP's CLS token is dropped
    torch.testing.assert_close(ours[0], reference[:, first_patch:])
    with pytest.raises(ValueError, match="out of range"):
        model.vision_hidden_states(**image_keys, layers=[5])


def test_call_styles_removed_in_0_2_0_fail_loudly(pair):
    """The text kind as the second positional argument or as ``kind=`` raises, instead of embedding
    the texts as short ones (FG-CLIP ignores the attention mask)."""
    model, processor = pair
    ids = processor(text=TEXTS, text_kind="long")["input_ids"]
    with pytest.raises(TypeError, match="attention_mask must be a tensor or None, got str"):
        model.get_text_features(ids, "long")
    with pytest.raises(TypeError, match="unexpected keyword argument.*kind"):
        model.get_text_features(ids, kind="long")


@pytest.mark.parametrize("name", ["fgclip", "fgclip2", "clip"])
def test_load_encoder_detects_the_family_and_encodes(name, tmp_path):
    if name == "clip":
        torch.manual_seed(0)
        config = tiny_config()
        clip_config = CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                                 projection_dim=config.projection_dim)
        reference = CLIPModel(clip_config).eval()
        reference.save_pretrained(tmp_path)
    else:
        model, processor = family(name)
        model.save_pretrained(tmp_path)
        processor.save_pretrained(tmp_path)
    assert detect_model_type(tmp_path) == name
    encoder = load_encoder(tmp_path)
    assert isinstance(encoder, Encoder)
    batch = encoder.prepare_images(images(), [torch.tensor([[-4.0, 0.0, 30.0, 40.0]]),  # clamped to the image
                                              torch.tensor([[0.0, 0.0, 32.0, 32.0]])])
    with torch.no_grad():
        image = encoder.encode_images(batch)
        regions = encoder.encode_regions(batch)
        texts = encoder.encode_texts(TEXTS, "long")
    for features in (image, regions, texts):
        assert_close_to_reference(features.norm(dim=-1), torch.ones(features.shape[0]), terms=2 * features.shape[-1])
    assert len(encoder.dense_maps(batch)) == 2
    if name == "clip":  # the baseline: plain CLIP's own features, long texts on its 77-token path
        ids = encoder.processor(text=TEXTS, text_kind="short", padding="longest")["input_ids"]
        with torch.no_grad():
            expected_text = F.normalize(reference.get_text_features(input_ids=ids).pooler_output, dim=-1)
            expected_image = reference.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        assert_close_to_reference(texts, expected_text, terms=tower_terms(config.text_config, ids.shape[1]))
        assert_close_to_reference(image, F.normalize(expected_image, dim=-1), terms=tower_terms(vision, 1 + patches))


def test_no_family_branches_outside_the_models_and_the_loader():
    """Only the model, configuration and processor files and the loader (fgclip/encoders.py) name a
    family's model class for a type check or compare a family string."""
    root = Path(__file__).resolve().parents[1]
    allowed = {"fgclip/encoders.py"}
    pattern = re.compile(r"isinstance\([^)]*FGCLIP2?Model|== \"fgclip2?\"|family == ")
    offenders = []
    for path in [*root.glob("fgclip/**/*.py"), *root.glob("detection/*.py"), *root.glob("tools/*.py"),
                 *root.glob("mllm/**/*.py")]:
        relative = path.relative_to(root).as_posix()
        if relative in allowed or re.match(r"fgclip/(modeling|configuration|processing)_", relative):
            continue
        offenders += [f"{relative}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders, offenders


def test_collating_single_image_batches_equals_one_call():
    model, processor = family("fgclip2")
    from fgclip.encoders import concat_image_batches

    pictures = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        joined = concat_image_batches([processor(images=[picture]) for picture in pictures])
        whole = processor(images=pictures)
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        assert torch.equal(joined[key], whole[key])
