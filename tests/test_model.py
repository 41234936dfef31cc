"""FGCLIPModel against independent references: transformers' plain CLIP modules, the closed-form
long-position rule, torchvision's RoIAlign and a hand-written value path."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.ops import roi_align
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionModel

from fgclip import FGCLIPConfig, FGCLIPModel, FGCLIPProcessor, interpolate_long_positions
from fgclip.testing import tiny_config
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

KEEP = 20
MIX_TERMS = 4  # a row of the long table: two products and a sum (or a difference, a product and a sum)


def long_table_by_rule(p: torch.Tensor) -> torch.Tensor:
    """REFERENCE section 1, written out row by row with the literal weights."""
    rows = [p[i] for i in range(KEEP)]
    for i in range(KEEP, 76):
        rows += [p[i], 3 / 4 * p[i] + 1 / 4 * p[i + 1], 2 / 4 * p[i] + 2 / 4 * p[i + 1], 1 / 4 * p[i] + 3 / 4 * p[i + 1]]
    rows += [p[76] + k * (p[76] - p[75]) / 4 for k in range(4)]
    return torch.stack(rows)


@pytest.fixture(scope="module")
def processor():
    return FGCLIPProcessor.for_config(tiny_config())


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory):
    """An upstream-layout checkpoint: plain CLIP config.json + FG-CLIP extra keys, random weights."""
    torch.manual_seed(0)
    config = tiny_config()
    clip_config = CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                             projection_dim=config.projection_dim)
    state = CLIPModel(clip_config).state_dict()
    width = config.text_config.hidden_size
    state["text_model.embeddings.position_embedding_ori.weight"] = torch.randn(248, width)
    state["text_model.embeddings.position_embedding_res.weight"] = torch.randn(248, width)
    state["text_filip_projection.weight"] = torch.randn(config.projection_dim, width)
    state["logit_scale_finegraind"] = torch.tensor(3.0)
    state["logit_scale_hardneg"] = torch.tensor(4.0)
    directory = tmp_path_factory.mktemp("upstream")
    clip_config.save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["model_type"] == "clip"
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    return directory, state


@pytest.fixture(scope="module")
def model(upstream_dir):
    return FGCLIPModel.from_pretrained(upstream_dir[0]).eval()


def test_long_table_matches_closed_form_rule():
    table = torch.randn(77, 8, dtype=torch.float64)
    long = interpolate_long_positions(table, keep=KEEP, stretch=4)
    assert long.shape == (248, 8)
    assert_close_to_reference(long, long_table_by_rule(table), terms=MIX_TERMS)


def test_config_lengths_and_published_geometries():
    assert (tiny_config().short_text_length, tiny_config().long_text_length) == (77, 248)
    b16, l14 = FGCLIPConfig.vit_b16(), FGCLIPConfig.vit_l14_336()
    assert (b16.vision_config.image_size, b16.vision_config.patch_size, b16.projection_dim) == (224, 16, 512)
    assert (l14.vision_config.image_size, l14.vision_config.patch_size, l14.projection_dim) == (336, 14, 768)
    assert (l14.vision_config.num_hidden_layers, l14.text_config.hidden_size) == (24, 768)
    with pytest.raises(ValueError, match="long_keep_positions"):
        tiny_config(long_keep_positions=80)


def test_from_clip_initialisation(tmp_path):
    torch.manual_seed(1)
    config = tiny_config()
    clip = CLIPModel(CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                                projection_dim=config.projection_dim))
    clip.save_pretrained(tmp_path / "clip")
    model = FGCLIPModel.from_clip(tmp_path / "clip")
    expected_long = long_table_by_rule(clip.text_model.embeddings.position_embedding.weight.detach())
    embeddings = model.text_model.embeddings
    assert_close_to_reference(embeddings.position_embedding_ori.weight, expected_long, terms=MIX_TERMS)
    assert_close_to_reference(embeddings.position_embedding_res.weight, expected_long, terms=MIX_TERMS)
    assert torch.equal(model.text_filip_projection.weight, clip.text_projection.weight)
    assert model.logit_scale_finegraind.item() == model.logit_scale_hardneg.item() == clip.logit_scale.item()
    for key, value in clip.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_upstream_checkpoint_loads_with_its_values(model, upstream_dir):
    _, state = upstream_dir
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_long_path_uses_ori_head_and_res_tail(model, upstream_dir, processor):
    _, state = upstream_dir
    ids = processor(text=["a small red triangle with a striped border next to a big blue circle"] * 2 + ["a dog"],
                    text_kind="long")["input_ids"]
    assert ids.shape == (3, 248)
    # Reference: transformers' plain CLIPTextModel whose single 248-row table is the hand-made mix.
    text_config = CLIPTextConfig(**{**model.config.text_config.to_dict(), "max_position_embeddings": 248})
    reference = CLIPTextModel(text_config).eval()
    ref_state = {k[len("text_model."):]: v for k, v in state.items()
                 if k.startswith("text_model.") and "position_embedding" not in k}
    ori = state["text_model.embeddings.position_embedding_ori.weight"]
    res = state["text_model.embeddings.position_embedding_res.weight"]
    ref_state["embeddings.position_embedding.weight"] = torch.cat([ori[:KEEP], res[KEEP:]])
    reference.load_state_dict(ref_state)
    with torch.no_grad():
        expected = reference(input_ids=ids).pooler_output @ state["text_filip_projection.weight"].t()
        got = model.get_text_features(ids, text_kind="long")
    assert_close_to_reference(got, expected, terms=tower_terms(text_config, 248))


def test_short_text_and_image_match_plain_clip(model, upstream_dir, processor):
    directory, _ = upstream_dir
    clip = CLIPModel.from_pretrained(directory).eval()
    ids = processor(text=["a photo of a cat", "a black plastic telephone"], text_kind="short")["input_ids"]
    pixels = torch.randn(2, 3, 32, 32)
    text_terms, image_terms = tower_terms(model.config.text_config, 77), tower_terms(model.config.vision_config, 17)
    with torch.no_grad():
        assert_close_to_reference(model.get_text_features(ids, text_kind="short"),
                                  clip.get_text_features(input_ids=ids).pooler_output, terms=text_terms)
        assert_close_to_reference(model.get_text_features(ids, text_kind="region"),
                                  clip.get_text_features(input_ids=ids).pooler_output, terms=text_terms)
        assert_close_to_reference(model.get_image_features(pixels),
                                  clip.get_image_features(pixel_values=pixels).pooler_output, terms=image_terms)


def test_longest_padding_gives_same_features(model, processor):
    texts = ["a dog", "a white velvet telephone with red buttons"]
    for kind, length in (("short", 77), ("long", 248)):
        with torch.no_grad():
            full = model.get_text_features(**processor(text=texts, text_kind=kind))
            tight = model.get_text_features(**processor(text=texts, text_kind=kind, padding="longest"))
        assert_close_to_reference(tight, full, terms=tower_terms(model.config.text_config, length))


def manual_dense(model: FGCLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """hidden_states[-2] of transformers' CLIPVisionModel, then the last block's value path by hand."""
    vision = CLIPVisionModel(model.config.vision_config).eval()
    vision.load_state_dict(model.vision_model.state_dict())
    interpolate = pixels.shape[-1] != model.config.vision_config.image_size
    x = vision(pixel_values=pixels, output_hidden_states=True,
               interpolate_pos_encoding=interpolate).hidden_states[-2]
    block = vision.encoder.layers[-1]
    v = F.linear(F.layer_norm(x, x.shape[-1:], block.layer_norm1.weight, block.layer_norm1.bias, block.layer_norm1.eps),
                 block.self_attn.v_proj.weight, block.self_attn.v_proj.bias)
    x = x + F.linear(v, block.self_attn.out_proj.weight, block.self_attn.out_proj.bias)
    h = F.layer_norm(x, x.shape[-1:], block.layer_norm2.weight, block.layer_norm2.bias, block.layer_norm2.eps)
    assert model.config.vision_config.hidden_act == "quick_gelu"
    h = F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)
    x = x + F.linear(h * torch.sigmoid(1.702 * h), block.mlp.fc2.weight, block.mlp.fc2.bias)
    x = vision.post_layernorm(x[:, 1:])
    return x @ model.visual_projection.weight.t()


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_dense_features_equal_manual_value_path(model, size):
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        dense = model.get_dense_features(pixels)
        expected = manual_dense(model, pixels)
    grid = (size[0] // 8, size[1] // 8)
    assert dense.shape == (2, *grid, model.config.projection_dim)
    assert_close_to_reference(dense.reshape(2, -1, dense.shape[-1]), expected,
                              terms=tower_terms(model.config.vision_config, 1 + grid[0] * grid[1]))


def test_region_features_equal_roi_align_on_grid_units(model):
    pixels = torch.randn(2, 3, 32, 32)
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [3.0, 5.0, 17.5, 30.0]]), torch.tensor([[8.0, 8.0, 16.0, 24.0]])]
    with torch.no_grad():
        regions = model.get_region_features(pixels, boxes)
        dense = model.get_dense_features(pixels).permute(0, 3, 1, 2)
    grid_boxes = [b / 8 for b in boxes]
    expected = roi_align(dense, grid_boxes, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    # bilinear interpolation (4 terms) at up to one sample per cell of the 4 x 4 grid, and their mean
    assert_close_to_reference(regions, expected[:, :, 0, 0], terms=5 * 16)
    normalized = model.get_region_features(pixels, boxes, normalize=True)
    assert_close_to_reference(normalized.norm(dim=-1), torch.ones(3), terms=2 * model.config.projection_dim)


def test_batch_equals_single_calls(model, processor):
    pixels = torch.randn(3, 3, 32, 32)
    boxes = [torch.tensor([[1.0, 2.0, 20.0, 30.0]]), torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 31.0, 12.0]]),
             torch.tensor([[10.0, 10.0, 11.0, 12.0]])]
    ids = processor(text=["a cat", "two dogs on a red sofa", "a green star"], text_kind="long",
                    padding="longest")["input_ids"]
    image_terms = tower_terms(model.config.vision_config, 17)
    text_terms = tower_terms(model.config.text_config, ids.shape[1])
    with torch.no_grad():
        batch = model.encode_image(pixels)
        regions = model.get_region_features(pixels, boxes)
        texts = model.get_text_features(ids, text_kind="long")
        for i in range(3):
            single = model.encode_image(pixels[i:i + 1])
            assert_close_to_reference(batch.image_embeds[i:i + 1], single.image_embeds, terms=image_terms)
            assert_close_to_reference(batch.dense_features[i:i + 1], single.dense_features, terms=image_terms)
            assert_close_to_reference(texts[i:i + 1], model.get_text_features(ids[i:i + 1], text_kind="long"),
                                      terms=text_terms)
        singles = torch.cat([model.get_region_features(pixels[i:i + 1], [boxes[i]]) for i in range(3)])
    assert_close_to_reference(regions, singles, terms=image_terms)
    assert_close_to_reference(batch.image_embeds, model.get_image_features(pixels), terms=image_terms)


def test_save_load_round_trip(model, tmp_path, processor):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = FGCLIPModel.from_pretrained(tmp_path).eval()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "fgclip"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    reloaded_processor = FGCLIPProcessor.from_pretrained(tmp_path)
    ids = reloaded_processor(text=["a red cup"], text_kind="long")["input_ids"]
    assert torch.equal(ids, processor(text=["a red cup"], text_kind="long")["input_ids"])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.get_text_features(ids, text_kind="long"),
                           model.get_text_features(ids, text_kind="long"))
        assert torch.equal(loaded.get_dense_features(pixels), model.get_dense_features(pixels))


def test_forward_logits(model, processor):
    pixels = torch.randn(2, 3, 32, 32)
    ids = processor(text=["a cat", "a dog", "a cow"], text_kind="short")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        image = F.normalize(model.get_image_features(pixels), dim=-1)
        text = F.normalize(model.get_text_features(ids), dim=-1)
    # the normalisations, the products (projection dim each) and the scale
    assert_close_to_reference(out.logits_per_image, image @ text.t() * model.logit_scale.exp(),
                              terms=3 * model.config.projection_dim + 1)


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([torch.tensor([[0.0, 0.0, 40.0, 10.0]])], "outside the 32x32 image"),
        ([torch.tensor([[-1.0, 0.0, 10.0, 10.0]])], "outside"),
        ([torch.tensor([[5.0, 5.0, 5.0, 10.0]])], "zero or negative area"),
        ([torch.tensor([[float("nan"), 0.0, 10.0, 10.0]])], "finite"),
        ([torch.tensor([0.0, 0.0, 10.0, 10.0])], r"shape \(K, 4\)"),
        ([], "one \\(K, 4\\) tensor per image"),
    ],
)
def test_bad_boxes_are_named(model, boxes, message):
    with pytest.raises(ValueError, match=message):
        model.get_region_features(torch.randn(1, 3, 32, 32), boxes)


def test_bad_text_and_pixel_inputs(model, processor):
    with pytest.raises(ValueError, match="unknown text kind 'medium'"):
        model.get_text_features(processor(text=["a cat"])["input_ids"], text_kind="medium")
    with pytest.raises(ValueError, match="unknown text kind"):
        processor(text=["a cat"], text_kind="medium")
    with pytest.raises(ValueError, match="texts is empty"):
        processor(text=[])
    with pytest.raises(ValueError, match="at most 77 tokens"):
        model.get_text_features(processor(text=["a cat"], text_kind="long")["input_ids"], text_kind="short")
    with pytest.raises(ValueError, match="eos token"):
        model.get_text_features(torch.tensor([[49406, 320, 2368]]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.get_image_features(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.get_dense_features(torch.randn(1, 4, 32, 32))
