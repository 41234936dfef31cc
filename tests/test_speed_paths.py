"""The fast paths give the plain paths' numbers: math-path attention on the CPU, joined q/k/v
projections and the MLP with QuickGELU's scalings folded into its weights where gradients flow, short-path texts bucketed by length;
float32 inference stays bit for bit (bfloat16 inference on the CPU takes the math path); each per-device choice is the one docs/benchmarks.md
(GPU readiness) describes."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention

import fgclip.modeling_fgclip as fgclip_modeling
from fgclip import FGCLIPModel
from fgclip.data.collate import length_buckets
from fgclip.losses import FGCLIPLoss
from fgclip.modeling_fgclip import SDPA_OR_MATH, FoldedQuickGELUMLP, FusedProjectionsAttention, sdpa_or_math_attention
from fgclip.testing import tiny_config
from fgclip.training import FGCLIPForTraining
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

BOS, EOS = 49406, 49407


class Attention(torch.nn.Module):
    """Stands in for a transformers attention module (the fields the attention functions read)."""

    def __init__(self, is_causal: bool):
        super().__init__()
        self.is_causal = is_causal


def plain(model: FGCLIPModel) -> FGCLIPModel:
    """transformers' own modules: sdpa attention, CLIPAttention, CLIPMLP with its QuickGELU."""
    model.set_attn_implementation("sdpa")
    for tower in (model.text_model, model.vision_model):
        for layer in tower.encoder.layers:
            layer.self_attn.__class__, layer.mlp.__class__ = CLIPAttention, CLIPMLP
    return model


def tiny_model(seed: int = 0) -> FGCLIPModel:
    torch.manual_seed(seed)
    return FGCLIPModel(tiny_config(num_layers=2))


def texts(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids padded with eos to the longest, and the attention mask (1 on bos..eos)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), EOS)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = BOS
        ids[row, 1:length - 1] = torch.randint(1, 49400, (length - 2,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


@pytest.mark.parametrize("case", ["causal", "full", "bool mask", "float mask"])
def test_attention_math_path_equals_sdpa_forward_and_backward(case):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 2, 7, 8, generator=generator) for _ in range(3))
    module = Attention(is_causal=case == "causal")
    mask = None
    if case == "bool mask":
        mask = torch.rand(3, 1, 7, 7, generator=generator) > 0.3
        mask[..., 0] = True  # every query sees a key
    if case == "float mask":
        mask = torch.randn(3, 1, 7, 7, generator=generator)
    results = []
    for function in (sdpa_attention_forward, sdpa_or_math_attention):
        inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
        output, _ = function(module, *inputs, mask, scaling=0.3, is_causal=case == "causal")
        output.square().sum().backward()
        results.append([output.detach()] + [tensor.grad for tensor in inputs])
    head_dim, length = query.shape[-1], query.shape[-2]
    terms = 2 * (head_dim + 2 * length)  # scores, softmax, weighted sum; the backward sums as many
    for reference, fast in zip(*results):
        assert_close_to_reference(fast, reference, terms=terms)


def test_attention_math_path_in_bf16_is_a_float32_softmax_rounded():
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(5, 2, 11, 8, generator=generator).bfloat16() for _ in range(3))
    module = Attention(is_causal=True)
    future = torch.ones(11, 11, dtype=torch.bool).triu(1)
    results = []
    for fast in (True, False):
        inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
        if fast:
            output, _ = sdpa_or_math_attention(module, *inputs, None, scaling=0.3, is_causal=True)
        else:  # the float32 softmax written out, its probabilities rounded to bfloat16; the causal
            # scores are rounded once (the scaling and the mask in the product's epilogue)
            scores = (inputs[0].float() @ inputs[1].float().transpose(-1, -2) * 0.3).bfloat16()
            scores = scores.masked_fill(future, float("-inf"))
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(torch.bfloat16)
            output = (weights @ inputs[2]).transpose(1, 2).contiguous()
        output.float().square().sum().backward()
        results.append([output.detach()] + [tensor.grad for tensor in inputs])
    assert torch.equal(results[0][0], results[1][0])
    for fast, reference in zip(results[0][1:], results[1][1:]):
        # bfloat16 roundings that differ: the probabilities (float32 in the reference's softmax
        # backward), their gradient, the products with the keys / queries / values, the scaling
        assert_close_to_reference(fast, reference, terms=4)


def test_attention_without_gradients_is_sdpa_bit_for_bit():
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(4, 2, 9, 8, generator=generator) for _ in range(3))
    module = Attention(is_causal=True)
    with torch.no_grad():
        fast, _ = sdpa_or_math_attention(module, query, key, value, None, scaling=0.125, is_causal=True)
        reference, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.125, is_causal=True)
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_inference_in_bf16_is_a_float32_softmax_rounded(causal):
    """bf16 inference on the CPU takes the math path: the products in bf16, the probabilities a float32
    softmax's rounded to bf16 (written out here), bit for bit where the roundings agree."""
    generator = torch.Generator().manual_seed(4)
    query, key, value = (torch.randn(3, 2, 13, 8, generator=generator).bfloat16() for _ in range(3))
    with torch.inference_mode():
        fast, _ = sdpa_or_math_attention(Attention(is_causal=causal), query, key, value, None, scaling=0.3,
                                         is_causal=causal)
        if causal:  # rounded once: the scaling and the mask in the product's epilogue
            scores = (query.float() @ key.float().transpose(-1, -2) * 0.3).bfloat16()
            scores = scores.masked_fill(torch.ones(13, 13, dtype=torch.bool).triu(1), float("-inf"))
        else:
            scores = query @ key.transpose(-1, -2) * 0.3
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(torch.bfloat16)
        reference = (weights @ value).transpose(1, 2)
        fused, _ = sdpa_attention_forward(Attention(is_causal=causal), query, key, value, None, scaling=0.3,
                                          is_causal=causal)
    assert torch.equal(fast, reference)
    # and the fused kernel's within bf16 rounding: a probability one bf16 step (2^-8 relative) off,
    # summed over 13 values of size ~3, plus the output's own rounding
    assert (fast.float() - fused.float()).abs().max() <= 13 * 2**-8 * 3 + 2**-7 * fused.float().abs().max()


def mlp_terms(mlp, hidden: torch.Tensor) -> int:
    """fc1 and fc2 forward and backward, and the weight gradients' sums over the tokens."""
    return 2 * (mlp.fc1.in_features + mlp.fc1.out_features) + hidden[..., 0].numel()


def test_folded_mlp_equals_clip_formula_with_gradients():
    torch.manual_seed(0)
    mlp = FGCLIPModel(tiny_config()).vision_model.encoder.layers[0].mlp.double()
    assert type(mlp) is FoldedQuickGELUMLP
    hidden = torch.randn(3, 5, 32, dtype=torch.float64) * 3
    exact_input = hidden.clone().requires_grad_()
    pre = exact_input @ mlp.fc1.weight.T + mlp.fc1.bias  # CLIP's formula written out
    exact = (pre * torch.sigmoid(1.702 * pre)) @ mlp.fc2.weight.T + mlp.fc2.bias
    exact.square().sum().backward()
    exact_grads = [exact_input.grad] + [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad(set_to_none=True)
    fast_input = hidden.clone().requires_grad_()
    fast = mlp(fast_input)
    fast.square().sum().backward()
    terms = mlp_terms(mlp, hidden)
    assert_close_to_reference(fast, exact, terms=terms)
    for fast_grad, exact_grad in zip([fast_input.grad] + [p.grad for p in mlp.parameters()], exact_grads):
        assert_close_to_reference(fast_grad, exact_grad, terms=terms)


def test_folded_mlp_gives_input_gradients_through_frozen_weights():
    """A frozen tower inside a trained model (or LoRA): the weights need no gradient, the input does."""
    torch.manual_seed(1)
    mlp = FGCLIPModel(tiny_config()).text_model.encoder.layers[0].mlp.double().requires_grad_(False)
    hidden = torch.randn(2, 4, 32, dtype=torch.float64)
    exact_input = hidden.clone().requires_grad_()
    pre = exact_input @ mlp.fc1.weight.T + mlp.fc1.bias
    ((pre * torch.sigmoid(1.702 * pre)) @ mlp.fc2.weight.T + mlp.fc2.bias).square().sum().backward()
    fast_input = hidden.clone().requires_grad_()
    mlp(fast_input).square().sum().backward()
    assert_close_to_reference(fast_input.grad, exact_input.grad, terms=mlp_terms(mlp, hidden))


ONEDNN_BF16 = fgclip_modeling.onednn_bf16_inference(torch.zeros(1, dtype=torch.bfloat16))


def test_folded_mlp_without_gradients_is_transformers_bit_for_bit():
    """float32 inference (and bf16 where oneDNN has no bf16 products) is transformers' formula."""
    torch.manual_seed(2)
    model = FGCLIPModel(tiny_config())
    with torch.no_grad():
        for mlp, dtype in [(model.text_model.encoder.layers[1].mlp, torch.float32),
                           (model.vision_model.encoder.layers[1].mlp, torch.float32)] + \
                          [(model.vision_model.encoder.layers[1].mlp, torch.bfloat16)] * (not ONEDNN_BF16):
            mlp.to(dtype)
            hidden = torch.randn(2, 7, 32).to(dtype)
            fast = mlp(hidden)
            mlp.__class__ = CLIPMLP
            assert torch.equal(fast, mlp(hidden))
            mlp.__class__ = FoldedQuickGELUMLP


def key_bias_scale(gradients: dict, name: str) -> float | None:
    """The key bias's gradient is zero (the softmax ignores a constant per row) up to the rounding of
    the per-token key gradients it sums; the key weight's gradient sums the same terms times the inputs."""
    if not name.endswith("k_proj.bias"):
        return None
    return float(gradients[name.replace("bias", "weight")].abs().max())


def test_joined_projections_equal_transformers_attention_with_gradients():
    torch.manual_seed(0)
    attention = FGCLIPModel(tiny_config()).text_model.encoder.layers[0].self_attn.double()
    assert type(attention) is FusedProjectionsAttention
    hidden = torch.randn(3, 6, 32, dtype=torch.float64)
    results = []
    for attention_class in (FusedProjectionsAttention, CLIPAttention):
        attention.__class__ = attention_class
        attention.zero_grad(set_to_none=True)
        inputs = hidden.clone().requires_grad_()
        output = attention(inputs, is_causal=True)[0]
        output.square().sum().backward()
        results.append([output.detach(), inputs.grad] + [p.grad for p in attention.parameters()])
    names = ["output", "input"] + [name for name, _ in attention.named_parameters()]
    reference = dict(zip(names, results[1]))
    width, length = hidden.shape[-1], hidden.shape[1]
    # projections in and out, scores, softmax, weighted sum; the backward as many, the weight
    # gradients summed over the tokens
    terms = 2 * (2 * width + attention.head_dim + 2 * length) + hidden[..., 0].numel()
    for name, fast in zip(names, results[0]):
        assert_close_to_reference(fast, reference[name], terms=terms, scale=key_bias_scale(reference, name),
                                  msg=name)


def test_attention_without_gradients_is_transformers_bit_for_bit():
    torch.manual_seed(1)
    attention = FGCLIPModel(tiny_config()).vision_model.encoder.layers[1].self_attn
    hidden = torch.randn(2, 17, 32)
    with torch.no_grad():
        fast = attention(hidden)[0]
        attention.__class__ = CLIPAttention
        assert torch.equal(fast, attention(hidden)[0])


def test_model_selects_the_training_kernels_and_keeps_an_explicit_choice():
    model = tiny_model()
    assert model.text_model.config._attn_implementation == SDPA_OR_MATH
    assert model.vision_model.config._attn_implementation == SDPA_OR_MATH
    assert all(type(layer.mlp) is FoldedQuickGELUMLP for layer in model.text_model.encoder.layers)
    eager = FGCLIPModel._from_config(tiny_config(), attn_implementation="eager")
    assert eager.text_model.config._attn_implementation == "eager"


def test_inference_features_do_not_move():
    """Without gradients the default model and one on transformers' kernels agree bit for bit."""
    fast, reference = tiny_model(), plain(tiny_model())
    ids, _ = texts([5, 9, 17, 3, 77])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 20.0]]), torch.tensor([[4.0, 8.0, 30.0, 31.0]])]
    with torch.no_grad():
        for model_a, model_b in [(fast, reference)]:
            assert torch.equal(model_a.get_text_features(ids), model_b.get_text_features(ids))
            out_a, out_b = model_a.encode_image(pixels, boxes=boxes), model_b.encode_image(pixels, boxes=boxes)
            for name in ("image_embeds", "dense_features", "region_embeds"):
                assert torch.equal(getattr(out_a, name), getattr(out_b, name))


def brute_force_cost(widths: list[int], overhead: int) -> int:
    best = None
    for cuts in itertools.product([False, True], repeat=len(widths) - 1):
        cost, start = 0, 0
        for index, cut in enumerate(list(cuts) + [True]):
            if cut:
                cost += (index + 1 - start) * widths[index] + overhead
                start = index + 1
        best = cost if best is None else min(best, cost)
    return best


def test_length_buckets_are_the_cheapest_cut():
    rng = random.Random(0)
    for _ in range(60):
        widths = sorted(rng.choice([3, 4, 5, 9, 12, 30, 77]) for _ in range(rng.randint(1, 10)))
        overhead = rng.choice([0, 5, 40, 1000])
        bounds = length_buckets(widths, overhead)
        assert bounds[0][0] == 0 and bounds[-1][1] == len(widths)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        cost = sum((end - start) * widths[end - 1] + overhead for start, end in bounds)
        assert cost == brute_force_cost(widths, overhead)


def stage2_batch(lengths: list[int]) -> dict:
    """4 images, 2 boxes each, one group of 1 + 3 candidates per box; short-path texts of ``lengths``."""
    generator = torch.Generator().manual_seed(3)
    short_ids, short_mask = texts(lengths, seed=4)
    long_ids, long_mask = texts([40, 12, 60, 25], seed=5)
    slots = 4 + 8 + 8 * 4
    assert len(lengths) >= slots
    return {
        "pixel_values": torch.randn(4, 3, 32, 32, generator=generator),
        "long_input_ids": long_ids, "long_attention_mask": long_mask,
        "short_input_ids": short_ids, "short_attention_mask": short_mask,
        "short_text_inverse": torch.randperm(len(lengths), generator=generator)[:slots],
        "short_text_ranges": {"short": (0, 4), "region": (4, 12), "hard_negative": (12, slots)},
        "boxes": [torch.tensor([[0.0, 0.0, 16.0, 20.0], [4.0, 8.0, 30.0, 31.0]])] * 4,
        "hard_negative_region_index": torch.arange(8),
    }


def run_step(step: FGCLIPForTraining, batch: dict) -> tuple[torch.Tensor, dict]:
    step.model.zero_grad(set_to_none=True)
    loss = step(**batch)["loss"]
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in step.model.named_parameters() if p.grad is not None}


def test_bucketed_step_equals_plain_one_call_step_in_fp32():
    lengths = [4] * 20 + [9] * 10 + [31] * 8 + [70] * 10
    batch = stage2_batch(lengths)
    fast = FGCLIPForTraining(tiny_model(), FGCLIPLoss(), regional=True, hard_negatives=True)
    fast.bucket_overhead_tokens = {"cpu": 0.01}  # the tiny tower's tokens are cheap: scaled x1536
    reference = FGCLIPForTraining(plain(tiny_model()), FGCLIPLoss(), regional=True, hard_negatives=True)
    plain_batch = {**batch, "short_attention_mask": None}  # no lengths: one call padded to the longest
    calls = []
    fast.model.text_model.embeddings.register_forward_pre_hook(  # once per text-tower call
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    loss, grads = run_step(fast, batch)
    reference_loss, reference_grads = run_step(reference, plain_batch)
    assert len(calls) >= 1 + 3 and sorted(width for _, width in calls[1:]) == [4, 9, 31, 70]
    forward = tower_terms(fast.model.config.text_config, 77) + len(lengths)
    assert_close_to_reference(loss, reference_loss, terms=forward)
    assert grads.keys() == reference_grads.keys()
    # forward, backward, and the weight gradients' sums over every text token (padding adds zeros)
    terms = 2 * forward + int(batch["short_attention_mask"].sum() + batch["long_attention_mask"].sum())
    for name, grad in grads.items():
        assert_close_to_reference(grad, reference_grads[name], terms=terms,
                                  scale=key_bias_scale(reference_grads, name), msg=name)


def test_bucketed_short_path_equals_each_text_alone_at_full_length():
    lengths = [3, 77, 5, 5, 40, 12, 3, 60, 8, 8, 8, 20] * 4
    batch = stage2_batch(lengths)
    step = FGCLIPForTraining(tiny_model(), FGCLIPLoss(), regional=True, hard_negatives=True)
    step.bucket_overhead_tokens = {"cpu": 0}
    with torch.no_grad():
        texts_by_kind = step.encode_short_path(batch["short_input_ids"], batch["short_attention_mask"],
                                               batch["short_text_inverse"], batch["short_text_ranges"],
                                               ["short", "region", "hard_negative"])
        full = F.pad(batch["short_input_ids"], (0, 77 - batch["short_input_ids"].shape[1]), value=EOS)
        for kind, head in (("short", "short"), ("region", "region"), ("hard_negative", "region")):
            rows = batch["short_text_inverse"][slice(*batch["short_text_ranges"][kind])]
            alone = torch.cat([step.model.get_text_features(full[row][None], text_kind=head) for row in rows])
            assert_close_to_reference(texts_by_kind[kind], alone,
                                      terms=tower_terms(step.model.config.text_config, 77))


def test_text_buckets_are_cut_for_the_device_the_texts_are_on(monkeypatch):
    """A text-tower call costs about 256 ViT-B/16 text tokens on the CPU and 4096 on a GPU (other
    accelerators are taken as GPUs): the CPU cuts a batch's short texts into more length buckets."""
    step = FGCLIPForTraining(tiny_model(), FGCLIPLoss(), regional=True, hard_negatives=True)
    # By hand: a 2-layer width-32 text tower costs 12 * 512**2 / (2 * 32**2) = 1536 times less per token than ViT-B/16's.
    assert step.bucket_overhead("cpu") == 256 * 1536
    assert step.bucket_overhead("cuda") == step.bucket_overhead("mps") == 4096 * 1536
    widths = sorted([4] * 200 + [9] * 100 + [31] * 60 + [70] * 40)  # a ViT-B/16 batch: 4 calls on the CPU, 2 on a GPU
    assert length_buckets(widths, 256) == [(0, 200), (200, 300), (300, 360), (360, 400)]
    assert length_buckets(widths, 4096) == [(0, 300), (300, 400)]
    seen = []
    monkeypatch.setattr("fgclip.training.module.length_buckets",
                        lambda widths, overhead: seen.append(overhead) or [(0, len(widths))])
    batch = stage2_batch([4] * 36 + [70] * 8)
    with torch.no_grad():
        step.encode_short_path(batch["short_input_ids"], batch["short_attention_mask"], batch["short_text_inverse"],
                               batch["short_text_ranges"], ["short"])
    assert seen == [step.bucket_overhead("cpu")]  # texts on the CPU


def test_one_call_when_the_model_cannot_trim():
    """All texts at the model's full length (nothing to trim): one short-path call."""
    batch = stage2_batch([77] * 44)
    step = FGCLIPForTraining(tiny_model(), FGCLIPLoss(), regional=True, hard_negatives=True)
    calls = []
    step.model.text_model.embeddings.register_forward_pre_hook(lambda *args: calls.append(1))  # once per call
    with torch.no_grad():
        step.encode_short_path(batch["short_input_ids"], batch["short_attention_mask"], batch["short_text_inverse"],
                               batch["short_text_ranges"], ["short", "region", "hard_negative"])
    assert len(calls) == 1


def test_feature_extractor_text_batches_follow_token_counts_and_keep_features():
    from fgclip import FGCLIPProcessor
    from fgclip.encoders import Encoder
    from fgclip.eval.features import FeatureExtractor

    model = tiny_model().eval()
    processor = FGCLIPProcessor.for_config(model.config)
    words = "a red wooden chair with black metal legs and a green woollen cushion on the seat".split()
    texts = [" ".join(words[: 1 + (index * 7) % len(words)]) + f" {index}" for index in range(23)]
    extractor = FeatureExtractor(Encoder(model, processor), text_batch_size=4, num_workers=0, progress=False)
    ordered, batches = extractor._text_batches(texts, "region")
    tokens = processor(text=ordered, text_kind="region", padding="longest")["attention_mask"].sum(dim=1).tolist()
    assert sorted(ordered) == sorted(texts) and tokens == sorted(tokens)
    assert batches[0][0] == 0 and batches[-1][1] == len(texts)
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:])) and all(0 < b - a <= 4 for a, b in batches)
    features = extractor.encode_texts(texts, "region")
    with torch.no_grad():
        alone = torch.cat([F.normalize(model.get_text_features(**processor(text=[text], text_kind="region")), dim=-1)
                           for text in texts])
    assert_close_to_reference(features, alone, terms=tower_terms(model.config.text_config, 77))


# ---------------------------------------------------------------------------------- per device
def recorded_sdpa(monkeypatch) -> list:
    """Replace the sdpa function the attention calls by one that records its query and returns it."""
    calls = []

    def record(module, query, key, value, attention_mask, **kwargs):
        calls.append(query)
        return query.transpose(1, 2), None

    monkeypatch.setattr("fgclip.modeling_fgclip.sdpa_attention_forward", record)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_with_gradients_off_the_cpu_is_sdpa(monkeypatch, dtype):
    """CUDA (here: any device but the CPU, on meta tensors) keeps sdpa where gradients flow: flash or
    memory-efficient attention, their softmax in float32 registers; no math path, no bf16 softmax."""
    calls = recorded_sdpa(monkeypatch)
    query, key, value = (torch.empty(2, 4, 9, 8, device="meta", dtype=dtype).requires_grad_() for _ in range(3))
    output, _ = sdpa_or_math_attention(Attention(is_causal=True), query, key, value, None, scaling=0.3)
    assert len(calls) == 1 and calls[0] is query and output.device.type == "meta"


def test_attention_on_the_cpu_takes_the_math_path_where_gradients_flow_or_in_short_bf16(monkeypatch):
    calls = recorded_sdpa(monkeypatch)
    query, key, value = (torch.randn(2, 4, 9, 8) for _ in range(3))
    sdpa_or_math_attention(Attention(is_causal=True), query, key, value, None, scaling=0.3)
    assert len(calls) == 1  # float32 without gradients: sdpa, bit for bit
    inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    sdpa_or_math_attention(Attention(is_causal=True), *inputs, None, scaling=0.3)
    assert len(calls) == 1  # gradients on the CPU: the math path
    with torch.no_grad():
        sdpa_or_math_attention(Attention(is_causal=True), query.bfloat16(), key.bfloat16(), value.bfloat16(), None)
        assert len(calls) == 1  # bfloat16 inference, 9 x 9 scores per head: the math path
        image, caption = (torch.empty(1, 1, length, 8, dtype=torch.bfloat16) for length in (257, 248))
        assert fgclip_modeling.takes_math_path(caption, caption)  # a long caption: the math path
        assert fgclip_modeling.takes_math_path(image[:, :, :197], image[:, :, :197])  # ViT-B/16 at 224 px
        assert not fgclip_modeling.takes_math_path(image, image)  # ViT-L/14 at 224 px, 257 tokens: sdpa


def test_attention_inference_off_the_cpu_is_sdpa_in_every_dtype(monkeypatch):
    calls = recorded_sdpa(monkeypatch)
    for dtype in (torch.float32, torch.bfloat16):
        query, key, value = (torch.empty(2, 4, 9, 8, device="meta", dtype=dtype) for _ in range(3))
        with torch.no_grad():
            sdpa_or_math_attention(Attention(is_causal=True), query, key, value, None, scaling=0.3)
    assert len(calls) == 2


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_folded_mlp_and_joined_projections_follow_gradients_on_every_device(monkeypatch, device):
    """The two training-kernel choices that are not per device: where gradients flow, on the CPU and
    on CUDA alike (meta stands in), the MLP folds QuickGELU's scalings and q/k/v run as one product;
    without gradients both are transformers' modules."""
    exact, separate = [], []
    original = fgclip_modeling.quick_gelu_in_place
    monkeypatch.setattr(fgclip_modeling, "quick_gelu_in_place", lambda hidden: exact.append(1) or original(hidden))
    layer = FGCLIPModel(tiny_config()).text_model.encoder.layers[0].to(device)
    layer.self_attn.q_proj.register_forward_hook(lambda *args: separate.append(1))
    hidden = torch.randn(2, 5, 32).to(device)
    layer.mlp(hidden.requires_grad_())
    layer.self_attn(hidden, is_causal=True)
    assert exact == [] and separate == []
    with torch.no_grad():
        layer.mlp(hidden)
        layer.self_attn(hidden, is_causal=True)
    assert exact == [1] and separate == [1]


def whole_tower_text_features(model: FGCLIPModel, ids: torch.Tensor) -> torch.Tensor:
    """transformers' ``CLIPTextModel`` pooled output (every layer at every row), projected."""
    return model.text_projection(model.text_model(input_ids=ids).pooler_output)


def whole_tower_image_features(model: FGCLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """transformers' ``CLIPVisionModel`` pooled output (the CLS row of every layer), projected."""
    return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("eos_token_id", [EOS, 2])
def test_pooled_text_equals_the_whole_tower_with_gradients(eos_token_id):
    """The last text layer runs at the pooled rows only; features and every gradient are the whole
    tower's (transformers' own forward), including the pre-2023 configs that pool at the largest id."""
    torch.manual_seed(3)
    config = tiny_config(num_layers=3)
    config.text_config.eos_token_id = eos_token_id
    model = FGCLIPModel(config).double()
    ids, _ = texts([4, 11, 7, 16])
    results = []
    for encode in (lambda: model.get_text_features(ids), lambda: whole_tower_text_features(model, ids)):
        model.zero_grad(set_to_none=True)
        features = encode()
        features.square().sum().backward()
        results.append([features.detach()] + [p.grad for _, p in model.text_model.named_parameters()])
    names = ["features"] + [name for name, _ in model.text_model.named_parameters()]
    terms = 2 * tower_terms(model.config.text_config, ids.shape[1]) + ids.numel()
    reference = dict(zip(names, results[1]))
    for name, fast in zip(names, results[0]):
        assert_close_to_reference(fast, reference[name], terms=terms, scale=key_bias_scale(reference, name),
                                  msg=name)


def test_image_embeds_equal_the_whole_tower_and_share_the_value_path_with_gradients():
    """The CLS row of the last vision block alone, with the layer norm and values the dense path
    uses: global embeddings and gradients as transformers' tower gives them, dense features as the
    value path alone gives them (bit for bit)."""
    torch.manual_seed(4)
    model = FGCLIPModel(tiny_config(num_layers=3)).double()
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    results = []
    for encode in (lambda: model.encode_image(pixels, dense=False).image_embeds,
                   lambda: whole_tower_image_features(model, pixels)):
        model.zero_grad(set_to_none=True)
        features = encode()
        features.square().sum().backward()
        results.append([features.detach()] + [p.grad for _, p in model.vision_model.named_parameters()])
    names = ["features"] + [name for name, _ in model.vision_model.named_parameters()]
    terms = 2 * tower_terms(model.config.vision_config, 17) + 2 * 17
    reference = dict(zip(names, results[1]))
    for name, fast in zip(names, results[0]):
        assert_close_to_reference(fast, reference[name], terms=terms, scale=key_bias_scale(reference, name),
                                  msg=name)
    with torch.no_grad():
        both = model.encode_image(pixels, dense=True)
        value_path = fgclip_modeling.value_path_tokens(model.vision_model, model.visual_projection,
                                                       model._block_outputs(pixels)[0])
        assert torch.equal(both.dense_features.reshape(value_path.shape), value_path)


def test_the_pooled_last_layer_skips_its_other_rows_flops():
    """Matmul FLOPs counted by torch (its counter leaves the CPU's fused attention out): the whole
    tower's minus, in the last layer, the query and output projections and the MLP of every row but
    the pooled one (a closed form)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = FGCLIPModel(tiny_config(num_layers=2)).eval()
    ids, _ = texts([9, 9, 9])
    counts = []
    with torch.no_grad():
        for encode in (lambda: model.pooled_text(ids), lambda: model.text_model(input_ids=ids)):
            with FlopCounterMode(display=False) as counter:
                encode()
            counts.append(counter.get_total_flops())
    config = model.config.text_config
    rows, length, width, inner = ids.shape[0], ids.shape[1], config.hidden_size, config.intermediate_size
    other_rows = rows * (length - 1)
    skipped = 2 * other_rows * (2 * width * width + 2 * width * inner)
    assert counts[1] - counts[0] == skipped


def autocast_reference(layer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's MLP and query projection as transformers computes them under bf16 autocast."""
    mlp, query = layer.mlp, layer.self_attn.q_proj
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inner = F.linear(hidden, mlp.fc1.weight, mlp.fc1.bias)
        return (F.linear(inner * torch.sigmoid(1.702 * inner), mlp.fc2.weight, mlp.fc2.bias),
                F.linear(hidden, query.weight, query.bias))


@pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN has no bf16 products on this CPU")
def test_bf16_inference_runs_prepacked_onednn_products_within_bf16_rounding():
    """bf16 inference on the CPU: the MLP (silu in the epilogue, QuickGELU's scalings folded into the
    packed weights) and the attention's projections on oneDNN's prepacked products; the values of
    transformers' layers under autocast within bf16 rounding; a changed weight is packed again."""
    torch.manual_seed(5)
    model = FGCLIPModel(tiny_config())
    hidden = torch.randn(3, 9, 32) * 2
    for layer in (model.vision_model.encoder.layers[0], model.text_model.encoder.layers[0]):
        assert type(layer.self_attn.q_proj) is fgclip_modeling.PackedBf16Linear
        for change in (0.0, 0.25):
            with torch.no_grad():
                layer.mlp.fc1.weight.add_(change)
                layer.self_attn.q_proj.bias.add_(change)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    mlp_output, query = layer.mlp(hidden), layer.self_attn.q_proj(hidden)
            assert {layer.mlp.fc1, layer.mlp.fc2, layer.self_attn.q_proj} <= set(fgclip_modeling._PACKED_BF16)
            mlp_reference, query_reference = autocast_reference(layer, hidden)
            assert mlp_output.dtype == query.dtype == torch.bfloat16
            # fc1's sum, the activation's three roundings, fc2's sum; the weights' bf16 roundings
            assert_close_to_reference(mlp_output, mlp_reference, terms=32 + 64 + 3 + 2, dtype=torch.bfloat16)
            assert_close_to_reference(query, query_reference, terms=32 + 2, dtype=torch.bfloat16)


def test_prepacked_products_stay_off_where_gradients_flow_in_float32_and_off_the_cpu():
    torch.manual_seed(6)
    model = FGCLIPModel(tiny_config())
    projection = model.vision_model.encoder.layers[0].self_attn.k_proj
    hidden = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # gradients flow: nn.Linear under autocast, same bits
        assert torch.equal(projection(hidden), F.linear(hidden, projection.weight, projection.bias))
    with torch.no_grad():
        assert torch.equal(projection(hidden), F.linear(hidden, projection.weight, projection.bias))
    assert projection not in fgclip_modeling._PACKED_BF16
    assert not fgclip_modeling.onednn_bf16_inference(torch.zeros(1, dtype=torch.bfloat16, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fgclip_modeling.onednn_bf16_inference(torch.zeros(1)) == ONEDNN_BF16


def test_a_model_copies_after_bf16_inference():
    """The packed weights (oneDNN's opaque tensors, which do not copy) are kept outside the modules."""
    import copy

    model = FGCLIPModel(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.get_image_features(pixels)
        copied = copy.deepcopy(model)
        assert torch.equal(copied.get_image_features(pixels), features)
