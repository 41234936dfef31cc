"""FGCLIP2Model and FGCLIP2Processor against independent references: transformers' plain SigLIP 2,
the long-position rule written out row by row, a hand-written dense head, closed-form RoIAlign
cases and an upstream-layout checkpoint."""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, Siglip2Config, Siglip2Model, Siglip2TextConfig, Siglip2TextModel

from fgclip import FGCLIP2Config, FGCLIP2Model, FGCLIP2Processor
from fgclip.testing import tiny_fgclip2_config, tiny_word_tokenizer
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

KEEP, SHORT, LONG = 20, 64, 196
MIX_TERMS = 4  # a row of the long table: two products and a sum (or a difference, a product and a sum)
WORDS = "a red car blue bird on the green grass small wooden chair with metal legs 一只 红色 的 汽车".split()


def long_table_by_rule(p: torch.Tensor) -> torch.Tensor:
    """REFERENCE sections 1 and 7: 196 = 20 + 4 * 43 + 4 rows, with the literal weights."""
    rows = [p[i] for i in range(KEEP)]
    for i in range(KEEP, SHORT - 1):
        rows += [p[i], 3 / 4 * p[i] + 1 / 4 * p[i + 1], 2 / 4 * p[i] + 2 / 4 * p[i + 1], 1 / 4 * p[i] + 3 / 4 * p[i + 1]]
    rows += [p[SHORT - 1] + k * (p[SHORT - 1] - p[SHORT - 2]) / 4 for k in range(4)]
    return torch.stack(rows)


def upstream_keys(layers: int) -> set[str]:
    """Parameter names of an upstream ``qihoo360/fg-clip2-*`` checkpoint, written out."""
    head = ["probe", "attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight",
            "attention.out_proj.bias", "layernorm.weight", "layernorm.bias", "mlp.fc1.weight", "mlp.fc1.bias",
            "mlp.fc2.weight", "mlp.fc2.bias"]
    layer = [f"{module}.{kind}" for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1",
                                               "mlp.fc2") for kind in ("weight", "bias")]
    keys = {f"text_model.embeddings.{table}.weight"
            for table in ("token_embedding", "position_embedding", "position_embedding_ori", "position_embedding_res")}
    keys |= {"text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias", "text_model.head.weight",
             "text_model.head.bias", "vision_model.embeddings.patch_embedding.weight",
             "vision_model.embeddings.patch_embedding.bias", "vision_model.embeddings.position_embedding.weight",
             "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias", "logit_scale", "logit_bias"}
    keys |= {f"{tower}.encoder.layers.{n}.{name}" for tower in ("text_model", "vision_model")
             for n in range(layers) for name in layer}
    keys |= {f"{prefix}.{name}" for prefix in ("vision_model.head", "dense_feature_head") for name in head}
    keys |= {f"{prefix}.{kind}" for prefix in ("longtext_head", "boxtext_head") for kind in ("weight", "bias")}
    return keys


@pytest.fixture(scope="module")
def siglip2():
    torch.manual_seed(0)
    config = tiny_fgclip2_config()
    plain = Siglip2Config(text_config={k: v for k, v in config.text_config.to_dict().items()
                                       if k not in ("keep_len", "longtext_len", "model_type")},
                          vision_config={k: v for k, v in config.vision_config.to_dict().items() if k != "model_type"})
    return Siglip2Model(plain).eval()


@pytest.fixture(scope="module")
def model(siglip2):
    torch.manual_seed(1)
    fgclip2 = FGCLIP2Model.from_siglip2(siglip2).eval()
    with torch.no_grad():  # make every FG-CLIP 2 addition differ from its SigLIP 2 source
        for parameter in (*fgclip2.longtext_head.parameters(), *fgclip2.boxtext_head.parameters(),
                          *fgclip2.dense_feature_head.parameters(),
                          fgclip2.text_model.embeddings.position_embedding_ori.weight,
                          fgclip2.text_model.embeddings.position_embedding_res.weight):
            parameter.add_(0.1 * torch.randn_like(parameter))
    return fgclip2


@pytest.fixture(scope="module")
def processor():
    return FGCLIP2Processor.for_config(tiny_fgclip2_config(), tiny_word_tokenizer(WORDS))


def images_of(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
            for w, h in sizes]


def token_ids(batch) -> dict[str, torch.Tensor]:
    """The tokenizer's outputs of a processor batch, as plain SigLIP 2 modules take them."""
    return {key: batch[key] for key in ("input_ids", "attention_mask")}


# ---------------------------------------------------------------------------------------- from SigLIP 2
def test_from_siglip2_keeps_siglip2_features_and_builds_long_table(siglip2, processor):
    fgclip2 = FGCLIP2Model.from_siglip2(siglip2).eval()
    texts = token_ids(processor(text=["a red car", "a small wooden chair with metal legs"], text_kind="short"))
    batch = processor(images=images_of([(40, 24), (16, 16)]))
    text_terms = tower_terms(fgclip2.config.text_config, SHORT)
    image_terms = tower_terms(fgclip2.config.vision_config, batch["pixel_values"].shape[1])
    with torch.no_grad():
        expected_text = siglip2.get_text_features(**texts).pooler_output
        expected_image = siglip2.get_image_features(**batch).pooler_output
        assert_close_to_reference(fgclip2.get_text_features(**texts, text_kind="short"), expected_text,
                                  terms=text_terms)
        assert_close_to_reference(fgclip2.get_text_features(**texts, text_kind="region"), expected_text,
                                  terms=text_terms)
        assert_close_to_reference(fgclip2.get_image_features(**batch), expected_image, terms=image_terms)
    embeddings = fgclip2.text_model.embeddings
    rule = long_table_by_rule(siglip2.text_model.embeddings.position_embedding.weight.detach())
    assert_close_to_reference(embeddings.position_embedding_ori.weight, rule, terms=MIX_TERMS)
    assert_close_to_reference(embeddings.position_embedding_res.weight, rule, terms=MIX_TERMS)
    assert all(torch.equal(a, b) for a, b in zip(fgclip2.dense_feature_head.state_dict().values(),
                                                 siglip2.vision_model.head.state_dict().values()))


# ---------------------------------------------------------------------------------------- text paths
def test_long_path_uses_ori_rows_then_res_rows_and_its_own_head(model, processor):
    """Reference: a plain SigLIP 2 text tower whose 196-row table is ori[:20] + res[20:]."""
    config = model.config.text_config
    plain_config = Siglip2TextConfig(**{k: v for k, v in config.to_dict().items()
                                        if k not in ("keep_len", "longtext_len", "model_type")})
    plain_config.max_position_embeddings = LONG
    plain = Siglip2TextModel(plain_config).eval()
    state = {k: v for k, v in model.text_model.state_dict().items() if "position_embedding" not in k}
    embeddings = model.text_model.embeddings
    state["embeddings.position_embedding.weight"] = torch.cat(
        [embeddings.position_embedding_ori.weight[:KEEP], embeddings.position_embedding_res.weight[KEEP:]])
    plain.load_state_dict(state)
    texts = token_ids(processor(text=["a blue bird on the green grass " * 6, "a red car"], text_kind="long"))
    assert texts["input_ids"].shape == (2, LONG)
    with torch.no_grad():
        pooled = plain(**texts).last_hidden_state[:, -1]
        assert_close_to_reference(model.get_text_features(**texts, text_kind="long"), model.longtext_head(pooled),
                                  terms=tower_terms(config, LONG))
        short = token_ids(processor(text=["a red car"], text_kind="short"))
        pooled_short = model.text_model(**short).last_hidden_state[:, -1]
        assert_close_to_reference(model.get_text_features(**short, text_kind="region"),
                                  model.boxtext_head(pooled_short), terms=tower_terms(config, SHORT))


def test_text_length_up_to_the_table_and_walk_type(model, processor):
    texts = processor(text=["a red car"])
    with pytest.raises(ValueError, match=r"fixed L <= 64 .*got shape \(1, 65\)"):
        model.get_text_features(torch.cat([texts["input_ids"], texts["input_ids"][:, :1]], 1))
    with pytest.raises(ValueError, match="fixed L <= 196"):
        model.get_text_features(torch.zeros(1, 197, dtype=torch.long), text_kind="long")
    with pytest.raises(ValueError, match="unknown text kind 'box'"):
        model.get_text_features(texts["input_ids"], texts["attention_mask"], text_kind="box")
    with pytest.raises(ValueError, match="Invalid walk_type 'boxes'"):
        model.get_text_features(texts["input_ids"], walk_type="boxes")
    with pytest.raises(ValueError, match="text_kind 'long' and walk_type 'box' disagree"):
        model.get_text_features(texts["input_ids"], text_kind="long", walk_type="box")
    with torch.no_grad():
        for walk_type, kind in (("short", "short"), ("box", "region"), ("LONG", "long")):
            torch.testing.assert_close(model.get_text_features(texts["input_ids"], walk_type=walk_type),
                                       model.get_text_features(texts["input_ids"], text_kind=kind), rtol=0, atol=0)
        # 64 tokens on the long path: positions 0..63 of the long table, by a plain SigLIP 2 text tower
        plain = Siglip2TextModel._from_config(Siglip2TextConfig(**{
            k: v for k, v in model.config.text_config.to_dict().items() if k not in ("keep_len", "longtext_len")}))
        plain.load_state_dict(model.text_model.state_dict(), strict=False)
        table = long_table_from_model(model)
        plain.embeddings.position_embedding.weight.copy_(table[:SHORT])
        pooled = plain(input_ids=texts["input_ids"]).last_hidden_state[:, -1]
        assert_close_to_reference(model.get_text_features(texts["input_ids"], walk_type="long"),
                                  model.longtext_head(pooled), terms=tower_terms(model.config.text_config, SHORT))


def long_table_from_model(model) -> torch.Tensor:
    embeddings = model.text_model.embeddings
    return torch.cat([embeddings.position_embedding_ori.weight[:KEEP], embeddings.position_embedding_res.weight[KEEP:]])


# ---------------------------------------------------------------------------------------- dense and regions
def dense_by_hand(model, tokens: torch.Tensor) -> torch.Tensor:
    """The dense head on one image's (n, C) tokens, every token a query, written with plain tensor ops."""
    head = model.dense_feature_head
    width, heads = tokens.shape[-1], head.num_heads
    q, k, v = (tokens @ head.attention.in_proj_weight.T + head.attention.in_proj_bias).split(width, dim=-1)
    split = lambda x: x.reshape(-1, heads, width // heads).transpose(0, 1)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(1, 2) / (width // heads) ** 0.5, dim=-1)
    attended = (weights @ split(v)).transpose(0, 1).reshape(-1, width)
    attended = head.attention.out_proj(attended)
    return attended + head.mlp(head.layernorm(attended))


def test_dense_features_per_image_match_an_unpadded_pass_by_hand(model, processor):
    sizes = [(40, 24), (16, 16), (12, 28)]
    batch = processor(images=images_of(sizes))
    shapes = batch["spatial_shapes"]
    assert batch["pixel_values"].shape[1] == 16 and len(set(map(tuple, shapes.tolist()))) > 1
    with torch.no_grad():
        dense = model.encode_image(**batch).dense_features
        for index, (h, w) in enumerate(shapes.tolist()):
            alone = batch["pixel_values"][index : index + 1, : h * w]
            tokens = model.vision_model(pixel_values=alone, pixel_attention_mask=torch.ones(1, h * w, dtype=torch.long),
                                        spatial_shapes=shapes[index : index + 1]).last_hidden_state[0]
            assert_close_to_reference(dense[index, : h * w], dense_by_hand(model, tokens),
                                      terms=tower_terms(model.config.vision_config, batch["pixel_values"].shape[1]))


def test_region_features_closed_forms(model, processor):
    """A whole-image box pools the mean of the image's patches; a one-cell box gives that cell."""
    images = images_of([(40, 24), (16, 16)])
    full = [torch.tensor([[0.0, 0.0, 40.0, 24.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    batch = processor(images=images, boxes=full)
    mapped = batch.pop("boxes")
    patch = 4
    with torch.no_grad():
        output = model.encode_image(**batch)
        maps = model.dense_maps(output)
        (h0, w0), (h1, w1) = batch["spatial_shapes"].tolist()
        assert_close_to_reference(mapped[0], torch.tensor([[0.0, 0.0, w0 * patch, h0 * patch]]), terms=2)
        cell = torch.tensor([[1 * patch, 2 * patch, 2 * patch, 3 * patch]], dtype=torch.float32)  # row 2, column 1
        regions = model.get_region_features(**batch, boxes=[torch.cat([mapped[0], cell]), mapped[1]])
    expected = torch.stack([maps[0].mean((0, 1)), maps[0][2, 1], maps[1].mean((0, 1))])
    # bilinear interpolation (4 terms) at up to one sample per cell of the grid, and their mean
    assert_close_to_reference(regions, expected, terms=5 * h0 * w0)


def test_boxes_are_checked_against_each_images_own_grid(model, processor):
    batch = processor(images=images_of([(40, 24), (16, 16)]))
    (h, w), _ = batch["spatial_shapes"].tolist()
    with pytest.raises(ValueError, match=rf"image 0: .*outside the {w * 4}x{h * 4} image"):
        model.get_region_features(**batch, boxes=[torch.tensor([[0.0, 0.0, w * 4 + 1.0, 4.0]]),
                                                  torch.tensor([[0.0, 0.0, 4.0, 4.0]])])


# ---------------------------------------------------------------------------------------- logits
def test_forward_gives_sigmoid_logits(model, processor):
    batch = processor(images=images_of([(20, 20), (32, 16)]), text=["a red car", "a blue bird", "the green grass"],
                      text_kind="short")
    with torch.no_grad():
        output = model(**batch)
        text = F.normalize(model.get_text_features(**batch), dim=-1)
        image = F.normalize(model.get_image_features(**batch), dim=-1)
    expected = text @ image.T * model.logit_scale.exp() + model.logit_bias
    terms = 3 * text.shape[-1] + 2  # the normalisations, the products, the scale and the bias
    assert_close_to_reference(output.logits_per_text, expected, terms=terms)
    assert_close_to_reference(output.logits_per_image, expected.T, terms=terms)


# ---------------------------------------------------------------------------------------- checkpoints
def test_upstream_layout_checkpoint_loads_and_saves_back(model, tmp_path):
    assert set(model.state_dict()) - {"long_position_ids"} == upstream_keys(2)
    config = model.config.to_dict()
    config.update({"architectures": ["FG_CLIP2_Model"], "training_stage": 2,
                   "auto_map": {"AutoModel": "modeling_fgclip2.FG_CLIP2_Model"}})
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, upstream / "model.safetensors")
    loaded, info = FGCLIP2Model.from_pretrained(upstream, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert isinstance(AutoModel.from_pretrained(upstream, trust_remote_code=False), FGCLIP2Model)
    ours = tmp_path / "ours"
    loaded.save_pretrained(ours)
    assert set(load_file(ours / "model.safetensors")) == upstream_keys(2)
    reloaded = FGCLIP2Model.from_pretrained(ours).eval()
    assert reloaded.config.text_config.longtext_len == LONG and reloaded.config.model_type == "fgclip2"
    ids = torch.randint(4, 40, (2, LONG))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.get_text_features(ids, text_kind="long"),
                                   model.get_text_features(ids, text_kind="long"))


def test_long_and_box_heads_are_hidden_by_hidden_as_the_official_model():
    config = tiny_fgclip2_config()
    config.text_config.projection_size = 16  # the official model sizes only text_model.head by projection_size
    model = FGCLIP2Model(config)
    assert tuple(model.text_model.head.weight.shape) == (16, 32)
    assert tuple(model.longtext_head.weight.shape) == tuple(model.boxtext_head.weight.shape) == (32, 32)


def test_presets_are_the_released_sizes():
    base, so400m = FGCLIP2Config.base(), FGCLIP2Config.so400m()
    assert (base.vision_config.hidden_size, base.vision_config.num_hidden_layers, base.vision_config.patch_size) == \
        (768, 12, 16)
    assert (so400m.vision_config.hidden_size, so400m.vision_config.intermediate_size,
            so400m.vision_config.num_hidden_layers) == (1152, 4304, 27)
    assert (base.short_text_length, base.long_text_length, base.text_config.vocab_size) == (64, 196, 256000)
    with pytest.raises(ValueError, match="longtext_len must be keep_len"):
        FGCLIP2Config(text_config={"longtext_len": 200})


# ---------------------------------------------------------------------------------------- processor
def test_texts_are_lowercased_padded_exactly_and_truncation_is_counted(processor):
    upper, lower = processor(text=["A Red CAR"], text_kind="short"), processor(text=["a red car"], text_kind="short")
    assert torch.equal(upper["input_ids"], lower["input_ids"])
    assert lower["input_ids"][0, :5].tolist() == [2, 4, 5, 6, 1] and lower["input_ids"][0, 5:].eq(0).all()
    assert lower["attention_mask"].sum().item() == 5
    assert processor(text=["a red car"], text_kind="long")["input_ids"].shape == (1, LONG)
    with pytest.warns(UserWarning, match="1 of 2 region texts exceed 64 tokens"):
        encoded = processor(text=["a red car " * 30, "a red car"], text_kind="region")
    assert encoded["input_ids"].shape == (2, SHORT)


def test_images_keep_their_aspect_and_boxes_are_mapped(processor):
    image = images_of([(80, 40)])[0]
    batch = processor(images=[image], boxes=[torch.tensor([[0.0, 0.0, 80.0, 40.0], [20, 10, 40, 30]])])
    (boxes,) = batch["boxes"]
    h, w = batch["spatial_shapes"][0].tolist()
    assert (h, w) == (3, 5) and batch["pixel_attention_mask"].sum().item() == h * w  # 2:1 in at most 16 patches
    scale = torch.tensor([w * 4 / 80, h * 4 / 40] * 2)
    assert_close_to_reference(boxes, torch.tensor([[0.0, 0.0, 80.0, 40.0], [20, 10, 40, 30]]) * scale, terms=2)
    bigger = processor(images=[image], max_num_patches=64)
    assert bigger["pixel_values"].shape[1] == 64 and bigger["spatial_shapes"].prod().item() > h * w


def test_auto_patch_budget_rule_and_mixed_budget_batches(model):
    from fgclip.processing_fgclip2 import auto_patch_budget

    sizes_and_budgets = {(16 * 16, 16 * 8): 128, (16 * 16, 16 * 9): 256, (16 * 24, 16 * 24): 576,
                         (16 * 28, 16 * 28): 784, (16 * 29, 16 * 28): 1024, (4000, 3000): 1024}
    for (width, height), budget in sizes_and_budgets.items():
        assert auto_patch_budget(Image.new("RGB", (width, height))) == budget, (width, height)
    small, large = images_of([(20, 12), (80, 80)])  # patch 4: 15 native patches -> 128, 400 -> 576
    per_image = FGCLIP2Processor.for_config(model.config, tiny_word_tokenizer(WORDS), max_num_patches="auto",
                                            budget_scope="image")
    batch = per_image(images=[small, large])
    assert batch["pixel_values"].shape[1] == 576 and batch["pixel_attention_mask"][0].sum() <= 128
    with torch.no_grad():
        together = model.get_image_features(**batch)
        alone = torch.cat([model.get_image_features(**per_image(images=[image])) for image in (small, large)])
    assert_close_to_reference(together, alone, terms=tower_terms(model.config.vision_config, 576))
    # the official rule (the default): one budget, the largest of the call, for every image of it
    official = FGCLIP2Processor.for_config(model.config, tiny_word_tokenizer(WORDS), max_num_patches="auto")
    call = official(images=[small, large])
    large_grid = per_image(images=[small], max_num_patches=576)["spatial_shapes"]
    assert torch.equal(call["spatial_shapes"], torch.cat([large_grid, batch["spatial_shapes"][1:]]))
    assert torch.equal(official(images=[small])["spatial_shapes"], batch["spatial_shapes"][:1])
    assert official.patch_budgets([small, large]) == [576, 576] and per_image.patch_budgets([small, large]) == [128, 576]
    with pytest.raises(ValueError, match="budget_scope must be one of"):
        official(images=[small], budget_scope="batch")
