"""Each FG-CLIP loss against a plain-Python loop written from its formula (single process).

The references below use lists of floats and the ``math`` module only: cosine
similarities, cross-entropies and log-sum-exps are spelled out element by element.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fgclip.losses import (
    CrossModalRankLoss,
    FGCLIP2Loss,
    FGCLIPLoss,
    GlobalContrastiveLoss,
    HardNegativeLoss,
    RegionalContrastiveLoss,
    RegionToAllTextsLoss,
    SigmoidGlobalLoss,
    TextualIntraModalContrastiveLoss,
    clamp_logit_scales,
)
from numerics import assert_close_to_reference

pytestmark = pytest.mark.numerics

# the normalisations and products of 8-dim rows, a log-sum-exp over up to 4 x 11 texts, a mean over up
# to 13 rows
TERMS = 3 * 8 + 4 * 11 + 13
LOG_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature


# ----------------------------------------------------------------------------- loop references
def unit_rows(tensor: torch.Tensor) -> list:
    """Nested lists of L2-normalised vectors (last dim), any leading shape."""
    if tensor.dim() == 1:
        values = [float(x) for x in tensor]
        norm = math.sqrt(sum(x * x for x in values))
        return [x / norm for x in values] if norm > 0 else values
    return [unit_rows(row) for row in tensor]


def dot(a: list, b: list) -> float:
    return sum(x * y for x, y in zip(a, b))


def log_sum_exp(values: list) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def cross_entropy(logits: list, target: int) -> float:
    return log_sum_exp(logits) - logits[target]


def scale_of(log_scale: float) -> float:
    return math.exp(log_scale)  # never clamped, as the official FG-CLIP code


def info_nce_reference(rows: list, columns: list, scale: float) -> float:
    """(mean_i CE(rows_i vs columns, i) + mean_j CE(columns_j vs rows, j)) / 2."""
    count = len(rows)
    forward = sum(cross_entropy([scale * dot(rows[i], columns[j]) for j in range(count)], i) for i in range(count))
    backward = sum(cross_entropy([scale * dot(columns[j], rows[i]) for i in range(count)], j) for j in range(count))
    return (forward / count + backward / count) / 2


def hard_negative_reference(regions: list, candidates: list, mask: list, scale: float) -> float:
    losses = []
    for region, texts, valid in zip(regions, candidates, mask):
        logits = [scale * dot(region, text) for text, keep in zip(texts, valid) if keep]
        losses.append(cross_entropy(logits, 0))
    return sum(losses) / len(losses)


def region_to_all_reference(regions: list, candidates: list, mask: list, scale: float) -> float:
    """Mean of region -> every valid text (target: own positive) and positive -> every region."""
    pool, positives = [], []
    for texts, valid in zip(candidates, mask):
        positives.append(len(pool))
        pool.extend(text for text, keep in zip(texts, valid) if keep)
    region_to_text = [
        cross_entropy([scale * dot(region, text) for text in pool], positive)
        for region, positive in zip(regions, positives)
    ]
    text_to_region = [
        cross_entropy([scale * dot(pool[positive], region) for region in regions], index)
        for index, positive in enumerate(positives)
    ]
    return (sum(region_to_text) + sum(text_to_region)) / 2 / len(regions)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid_reference(images: list, texts: list, scale: float, bias: float) -> float:
    total = 0.0
    for i, image in enumerate(images):
        for j, text in enumerate(texts):
            label = 1.0 if i == j else -1.0
            total -= log_sigmoid(label * (scale * dot(image, text) + bias))
    return total / len(images)


def tic_reference(texts: list, top_k: int = 10, threshold: float = 0.95) -> float:
    losses = []
    for i, text in enumerate(texts):
        row = []
        for j, other in enumerate(texts):
            similarity = dot(text, other)
            row.append(0.0 if i == j or similarity > threshold else similarity)
        row.sort(reverse=True)
        losses.append(log_sum_exp(row[: min(top_k, len(row))]))
    return sum(losses) / len(losses)


def rank_scores(regions: list, candidates: list, mask: list, scale: float) -> tuple[list, list]:
    """Positive scores per region and (region index, negative score) for every valid negative."""
    positives, negatives = [], []
    for r, (region, texts, valid) in enumerate(zip(regions, candidates, mask)):
        positives.append(scale * dot(region, texts[0]))
        negatives.extend((r, scale * dot(region, text)) for text, keep in zip(texts[1:], valid[1:]) if keep)
    return positives, negatives


def rank_theta_reference(positives: list, negatives: list, low: float = 0.0, high: float = 10.0) -> float:
    theta = sum(positives) / len(positives) - sum(score for _, score in negatives) / len(negatives)
    return min(max(theta, low), high)


def rank_loss_reference(positives: list, negatives: list, theta: float) -> float:
    return sum(max(0.0, theta + score - positives[r]) for r, score in negatives) / len(negatives)


# ----------------------------------------------------------------------------- helpers
def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def log_scale(value: float = LOG_SCALE) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


def random_mask(regions: int, candidates: int, seed: int) -> torch.Tensor:
    """(regions, candidates) bool mask, positive always kept, a random number of negatives missing."""
    generator = torch.Generator().manual_seed(seed)
    kept = torch.randint(0, candidates, (regions,), generator=generator)
    mask = torch.arange(candidates).unsqueeze(0) <= kept.unsqueeze(1)
    mask[0, 1:] = True  # one full row
    if regions > 1:
        mask[1, 1:] = False  # one row without any negative
    return mask


def assert_loss(value, expected: float, logit_scale: float = scale_of(LOG_SCALE), dtype=torch.float64,
                msg: str | None = None) -> None:
    """Within the rounding bound of the loss's sums, whose terms (logits) reach ``logit_scale``."""
    assert_close_to_reference(value, expected, terms=TERMS, dtype=dtype, scale=max(abs(expected), logit_scale),
                              msg=msg)


def assert_connected_zero(loss: torch.Tensor, *inputs: torch.Tensor) -> None:
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    for tensor in inputs:
        assert tensor.grad is not None and torch.count_nonzero(tensor.grad) == 0


# ----------------------------------------------------------------------------- global losses
@pytest.mark.parametrize("scale_value", [LOG_SCALE, math.log(300.0)])
def test_global_contrastive_matches_loop(scale_value):
    images, long_texts, short_texts = randn(5, 8, seed=0), randn(5, 8, seed=1), randn(5, 8, seed=2)
    loss_fn = GlobalContrastiveLoss()
    loss = loss_fn(images, [long_texts, short_texts], log_scale(scale_value))
    scale = scale_of(scale_value)
    expected = info_nce_reference(unit_rows(images), unit_rows(long_texts), scale) + info_nce_reference(
        unit_rows(images), unit_rows(short_texts), scale
    )
    assert_loss(loss.item(), expected, logit_scale=scale)
    single = loss_fn(images, long_texts, log_scale(scale_value))
    assert_loss(single.item(), info_nce_reference(unit_rows(images), unit_rows(long_texts), scale), logit_scale=scale)


def test_global_contrastive_scale_above_100_is_not_clamped():
    """exp(4.6052) = 100.003 (CLIP's trained scale, the stage-2 start): a clamp at 100 would
    zero the temperature's gradient; the official code has none."""
    images, texts = randn(4, 8, seed=3), randn(4, 8, seed=4)
    for value in (math.log(100.0) + 3e-5, math.log(400.0)):
        scale = log_scale(value)
        loss = GlobalContrastiveLoss()(images, texts, scale)
        loss.backward()
        expected = info_nce_reference(unit_rows(images), unit_rows(texts), math.exp(value))
        assert_loss(loss.item(), expected, logit_scale=math.exp(value))
        assert abs(scale.grad.item()) > 1e-3


def test_global_contrastive_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"text_embeds\[1\]"):
        GlobalContrastiveLoss()(randn(4, 8, seed=0), [randn(4, 8, seed=1), randn(3, 8, seed=2)], log_scale())


def test_sigmoid_global_matches_loop():
    images, long_texts, short_texts = randn(5, 8, seed=5), randn(5, 8, seed=6), randn(5, 8, seed=7)
    bias = torch.tensor(-2.5, dtype=torch.float64)
    loss = SigmoidGlobalLoss()(images, [long_texts, short_texts], log_scale(math.log(10.0)), bias)
    expected = sigmoid_reference(unit_rows(images), unit_rows(long_texts), 10.0, -2.5) + sigmoid_reference(
        unit_rows(images), unit_rows(short_texts), 10.0, -2.5
    )
    assert_loss(loss.item(), expected, logit_scale=12.5)


# ----------------------------------------------------------------------------- regional losses
@pytest.mark.parametrize("num_boxes", [1, 2, 6])
def test_regional_contrastive_matches_loop(num_boxes):
    regions, texts = randn(num_boxes, 8, seed=10), randn(num_boxes, 8, seed=11)
    loss = RegionalContrastiveLoss()(regions, texts, log_scale())
    expected = info_nce_reference(unit_rows(regions), unit_rows(texts), scale_of(LOG_SCALE))
    assert_loss(loss.item(), expected)
    if num_boxes == 1:
        assert_loss(loss.item(), 0.0)  # a single box has no negative


def test_regional_contrastive_with_no_box_is_connected_zero():
    regions = randn(0, 8, seed=0).requires_grad_()
    texts = randn(0, 8, seed=1).requires_grad_()
    scale = log_scale()
    assert_connected_zero(RegionalContrastiveLoss()(regions, texts, scale), regions, texts, scale)


def test_hard_negative_matches_loop_with_variable_negatives():
    regions, candidates = randn(5, 8, seed=12), randn(5, 11, 8, seed=13)
    mask = random_mask(5, 11, seed=14)
    loss = HardNegativeLoss()(regions, candidates, log_scale(), mask)
    expected = hard_negative_reference(
        unit_rows(regions), unit_rows(candidates), mask.tolist(), scale_of(LOG_SCALE)
    )
    assert_loss(loss.item(), expected)
    full = HardNegativeLoss()(regions, candidates, log_scale())
    expected_full = hard_negative_reference(
        unit_rows(regions), unit_rows(candidates), [[True] * 11] * 5, scale_of(LOG_SCALE)
    )
    assert_loss(full.item(), expected_full)


def test_hard_negative_padding_never_changes_the_loss():
    """Masked slots may hold anything (zeros, garbage): value and gradients stay the same."""
    regions, candidates = randn(3, 8, seed=15), randn(3, 6, 8, seed=16)
    mask = random_mask(3, 6, seed=17)
    garbage = candidates.clone()
    garbage[~mask] = 1e3
    zeros = candidates.clone()
    zeros[~mask] = 0.0
    values = [HardNegativeLoss()(regions, c, log_scale(), mask).item() for c in (candidates, garbage, zeros)]
    assert_loss(values[1], values[0])
    assert_loss(values[2], values[0])
    zeros.requires_grad_()
    HardNegativeLoss()(regions, zeros, log_scale(), mask).backward()
    assert torch.isfinite(zeros.grad).all() and torch.count_nonzero(zeros.grad[~mask]) == 0


def test_hard_negative_one_region_and_no_region():
    regions, candidates = randn(1, 8, seed=18), randn(1, 11, 8, seed=19)
    loss = HardNegativeLoss()(regions, candidates, log_scale())
    expected = hard_negative_reference(unit_rows(regions), unit_rows(candidates), [[True] * 11], scale_of(LOG_SCALE))
    assert_loss(loss.item(), expected)
    empty_regions = randn(0, 8, seed=0).requires_grad_()
    empty_candidates = randn(0, 11, 8, seed=0).requires_grad_()
    scale = log_scale()
    loss = HardNegativeLoss()(empty_regions, empty_candidates, scale)
    assert_connected_zero(loss, empty_regions, empty_candidates, scale)


def test_hard_negative_rejects_masked_positive_and_bad_shapes():
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 0] = False
    with pytest.raises(ValueError, match=r"positive \(column 0\) is masked out for regions \[1\]"):
        HardNegativeLoss()(randn(2, 8, seed=0), randn(2, 11, 8, seed=1), log_scale(), mask)
    with pytest.raises(ValueError, match="candidate_embeds"):
        HardNegativeLoss()(randn(2, 8, seed=0), randn(3, 11, 8, seed=1), log_scale())


def test_region_to_all_texts_matches_loop():
    regions, candidates = randn(4, 8, seed=20), randn(4, 11, 8, seed=21)
    mask = random_mask(4, 11, seed=22)
    loss = RegionToAllTextsLoss()(regions, candidates, log_scale(), mask)
    expected = region_to_all_reference(unit_rows(regions), unit_rows(candidates), mask.tolist(), scale_of(LOG_SCALE))
    assert_loss(loss.item(), expected)
    empty = randn(0, 8, seed=0).requires_grad_()
    assert_connected_zero(RegionToAllTextsLoss()(empty, randn(0, 11, 8, seed=0), log_scale()), empty)


# ----------------------------------------------------------------------------- TIC
def near_duplicate_texts(count: int, seed: int) -> torch.Tensor:
    """Random captions where rows 1 and 3 are near copies of row 0 and 2 (cosine > 0.95)."""
    texts = randn(count, 8, seed=seed)
    texts[1] = texts[0] + 0.01 * randn(8, seed=seed + 1)
    texts[3] = texts[2] * 3.0 + 0.01 * randn(8, seed=seed + 2)
    return texts


@pytest.mark.parametrize("count", [1, 4, 13])
def test_tic_matches_loop(count):
    texts = near_duplicate_texts(count, seed=30) if count >= 4 else randn(count, 8, seed=30)
    loss = TextualIntraModalContrastiveLoss()(texts)
    assert_loss(loss.item(), tic_reference(unit_rows(texts)), logit_scale=1.0)


def test_tic_zeroes_near_duplicates():
    texts = near_duplicate_texts(13, seed=31)
    unit = unit_rows(texts)
    assert dot(unit[0], unit[1]) > 0.95 and dot(unit[2], unit[3]) > 0.95
    strict = TextualIntraModalContrastiveLoss(duplicate_threshold=1.01)(texts)
    assert_loss(strict.item(), tic_reference(unit, threshold=1.01), logit_scale=1.0)
    assert strict.item() > TextualIntraModalContrastiveLoss()(texts).item()  # duplicates raised it
    top3 = TextualIntraModalContrastiveLoss(top_k=3)(texts)
    assert_loss(top3.item(), tic_reference(unit, top_k=3), logit_scale=1.0)


def test_tic_with_no_text_is_connected_zero():
    texts = randn(0, 8, seed=0).requires_grad_()
    assert_connected_zero(TextualIntraModalContrastiveLoss()(texts), texts)


# ----------------------------------------------------------------------------- rank loss
def test_rank_loss_matches_loop():
    regions, candidates = randn(5, 8, seed=40), randn(5, 11, 8, seed=41)
    candidates[:, 0] = regions + 0.3 * randn(5, 8, seed=42)  # positives closer than negatives
    mask = random_mask(5, 11, seed=43)
    loss_fn = CrossModalRankLoss()
    loss = loss_fn(regions, candidates, mask, log_scale(math.log(5.0)))
    positives, negatives = rank_scores(unit_rows(regions), unit_rows(candidates), mask.tolist(), 5.0)
    theta = rank_theta_reference(positives, negatives)
    assert 0.0 < theta < 10.0
    assert_loss(loss_fn.theta.item(), theta, logit_scale=5.0)
    assert_loss(loss.item(), rank_loss_reference(positives, negatives, theta), logit_scale=5.0)
    unscaled = CrossModalRankLoss()(regions, candidates, mask)
    positives, negatives = rank_scores(unit_rows(regions), unit_rows(candidates), mask.tolist(), 1.0)
    expected = rank_loss_reference(positives, negatives, rank_theta_reference(positives, negatives))
    assert_loss(unscaled.item(), expected, logit_scale=1.0)


def test_rank_loss_theta_is_clamped():
    regions = randn(3, 8, seed=44)
    candidates = torch.stack([regions, -regions, -regions], dim=1)  # s_pos - s_neg = 2 * scale
    loss_fn = CrossModalRankLoss()
    loss_fn(regions, candidates, logit_scale=log_scale(math.log(100.0)))
    assert loss_fn.theta.item() == pytest.approx(10.0)  # 200 clamped to 10
    flipped = torch.stack([-regions, regions, regions], dim=1)
    loss = loss_fn(regions, flipped)
    assert loss_fn.theta.item() == 0.0  # -2 clamped to 0
    assert_loss(loss.item(), 2.0, logit_scale=1.0)  # relu(0 + 1 - (-1))


def test_rank_loss_momentum_and_eval_mode():
    batches = [(randn(4, 8, seed=50 + i), randn(4, 6, 8, seed=60 + i)) for i in range(3)]
    for regions, candidates in batches:
        candidates[:, 0] = regions + 0.5 * randn(4, 8, seed=70)
    loss_fn = CrossModalRankLoss(momentum=0.75)
    theta = None
    for regions, candidates in batches:
        loss = loss_fn(regions, candidates)
        positives, negatives = rank_scores(unit_rows(regions), unit_rows(candidates), [[True] * 6] * 4, 1.0)
        batch_theta = rank_theta_reference(positives, negatives)
        theta = batch_theta if theta is None else 0.75 * theta + 0.25 * batch_theta
        assert_loss(loss_fn.theta.item(), theta, logit_scale=1.0)
        assert_loss(loss.item(), rank_loss_reference(positives, negatives, theta), logit_scale=1.0)
    assert loss_fn.num_updates.item() == 3
    loss_fn.eval()
    regions, candidates = randn(4, 8, seed=80), randn(4, 6, 8, seed=81)
    loss = loss_fn(regions, candidates)
    positives, negatives = rank_scores(unit_rows(regions), unit_rows(candidates), [[True] * 6] * 4, 1.0)
    assert_loss(loss_fn.theta.item(), theta, logit_scale=1.0)  # unchanged in eval mode
    assert_loss(loss.item(), rank_loss_reference(positives, negatives, theta), logit_scale=1.0)


def test_rank_loss_theta_state_dict_round_trip():
    first, second = (randn(4, 8, seed=90), randn(4, 6, 8, seed=91)), (randn(4, 8, seed=92), randn(4, 6, 8, seed=93))
    first[1][:, 0] = first[0]  # a large first-batch theta
    running = CrossModalRankLoss(momentum=0.9)
    running(*first)
    state = {name: value.clone() for name, value in running.state_dict().items()}
    assert set(state) == {"theta", "num_updates"} and state["theta"].item() > 0.5

    resumed = CrossModalRankLoss(momentum=0.9)
    resumed.load_state_dict(state)
    assert resumed.theta.item() == running.theta.item()
    expected = running(*second)
    assert resumed(*second).item() == pytest.approx(expected.item(), abs=1e-12)
    assert resumed.theta.item() == pytest.approx(running.theta.item(), abs=1e-12)
    fresh = CrossModalRankLoss(momentum=0.9)
    assert abs(fresh(*second).item() - expected.item()) > 1e-3  # the restored state mattered


def test_rank_loss_without_negatives_is_connected_zero():
    regions = randn(2, 8, seed=0).requires_grad_()
    candidates = randn(2, 3, 8, seed=1).requires_grad_()
    mask = torch.tensor([[True, False, False], [True, False, False]])
    loss_fn = CrossModalRankLoss()
    assert_connected_zero(loss_fn(regions, candidates, mask), regions, candidates)
    assert loss_fn.num_updates.item() == 0


# ----------------------------------------------------------------------------- combined objectives
def stage2_inputs(seed: int) -> dict[str, torch.Tensor]:
    return {
        "images": randn(4, 8, seed=seed),
        "long": randn(4, 8, seed=seed + 1),
        "short": randn(4, 8, seed=seed + 2),
        "regions": randn(6, 8, seed=seed + 3),
        "region_texts": randn(6, 8, seed=seed + 4),
        "hard_regions": randn(5, 8, seed=seed + 5),
        "candidates": randn(5, 11, 8, seed=seed + 6),
        "mask": random_mask(5, 11, seed=seed + 7),
    }


def test_fgclip_loss_combines_terms():
    data = stage2_inputs(100)
    scales = {"global": LOG_SCALE, "fine": math.log(20.0), "hard": math.log(30.0)}
    inputs = dict(
        region_embeds=data["regions"],
        region_text_embeds=data["region_texts"],
        logit_scale_finegraind=log_scale(scales["fine"]),
        hard_region_embeds=data["hard_regions"],
        hard_candidate_embeds=data["candidates"],
        hard_candidate_mask=data["mask"],
        logit_scale_hardneg=log_scale(scales["hard"]),
    )
    captions = {"long": data["long"], "short": data["short"]}
    total, terms = FGCLIPLoss()(data["images"], captions, log_scale(scales["global"]), **inputs)
    images = unit_rows(data["images"])
    global_long = info_nce_reference(images, unit_rows(data["long"]), scale_of(scales["global"]))
    global_short = info_nce_reference(images, unit_rows(data["short"]), scale_of(scales["global"]))
    regional = info_nce_reference(unit_rows(data["regions"]), unit_rows(data["region_texts"]), 20.0)
    hard = hard_negative_reference(
        unit_rows(data["hard_regions"]), unit_rows(data["candidates"]), data["mask"].tolist(), 30.0
    )
    assert set(terms) == {"global_long", "global_short", "global", "regional", "hard_negative"}
    assert_loss(terms["global_long"].item(), global_long, logit_scale=30.0)
    assert_loss(terms["global_short"].item(), global_short, logit_scale=30.0)
    assert_loss(terms["regional"].item(), regional, logit_scale=30.0)
    assert_loss(terms["hard_negative"].item(), hard, logit_scale=30.0)
    assert all(value.grad_fn is None for value in terms.values())
    assert_loss(total.item(), global_long + global_short + 0.1 * regional + 0.5 * hard, logit_scale=30.0)

    weighted, _ = FGCLIPLoss(regional_weight=1.0, hard_negative_weight=2.0)(
        data["images"], captions, log_scale(scales["global"]), **inputs)
    assert_loss(weighted.item(), global_long + global_short + regional + 2.0 * hard, logit_scale=30.0)


def test_fgclip_loss_region_scope_picks_the_region_batch():
    """Per rank by default (the official code), all ranks with "global"; the global term always gathers."""
    official, joined = FGCLIPLoss(), FGCLIPLoss(region_scope="global")
    assert official.global_loss.across_ranks and joined.global_loss.across_ranks
    assert not official.regional_loss.across_ranks and not official.hard_negative_loss.across_ranks
    assert joined.regional_loss.across_ranks and joined.hard_negative_loss.across_ranks
    with pytest.raises(ValueError, match="region_scope: expected one of rank, global, got 'local'"):
        FGCLIPLoss(region_scope="local")


def test_fgclip_loss_stage1_and_missing_inputs():
    data = stage2_inputs(200)
    total, terms = FGCLIPLoss()(data["images"], {"long": data["long"]}, log_scale())
    assert set(terms) == {"global_long", "global"}
    expected = info_nce_reference(unit_rows(data["images"]), unit_rows(data["long"]), scale_of(LOG_SCALE))
    assert_loss(total.item(), expected)
    with pytest.raises(ValueError, match="regional loss: missing input.*logit_scale_finegraind"):
        FGCLIPLoss()(
            data["images"], {"long": data["long"]}, log_scale(),
            region_embeds=data["regions"], region_text_embeds=data["region_texts"],
        )


def test_fgclip2_loss_combines_terms():
    data = stage2_inputs(300)
    data["candidates"][:, 0] = data["hard_regions"] + 0.3 * randn(5, 8, seed=301)
    bias = torch.tensor(-3.0, dtype=torch.float64)
    total, terms = FGCLIP2Loss()(
        data["images"],
        {"short": data["short"], "long": data["long"]},
        log_scale(math.log(10.0)),
        bias,
        region_embeds=data["regions"],
        region_text_embeds=data["region_texts"],
        logit_scale_finegraind=log_scale(math.log(20.0)),
        hard_region_embeds=data["hard_regions"],
        hard_candidate_embeds=data["candidates"],
        hard_candidate_mask=data["mask"],
        logit_scale_hardneg=log_scale(math.log(4.0)),
    )
    images = unit_rows(data["images"])
    sigmoid = sigmoid_reference(images, unit_rows(data["short"]), 10.0, -3.0) + sigmoid_reference(
        images, unit_rows(data["long"]), 10.0, -3.0
    )
    regional = info_nce_reference(unit_rows(data["regions"]), unit_rows(data["region_texts"]), 20.0)
    tic = tic_reference(unit_rows(data["region_texts"]))
    hard_args = (unit_rows(data["hard_regions"]), unit_rows(data["candidates"]), data["mask"].tolist(), 4.0)
    region_to_all = region_to_all_reference(*hard_args)
    hard = hard_negative_reference(*hard_args)
    positives, negatives = rank_scores(*hard_args)
    theta = rank_theta_reference(positives, negatives)
    rank = rank_loss_reference(positives, negatives, theta)
    expected = {
        "global": sigmoid,
        "regional": regional,
        "tic": tic,
        "region_to_all": region_to_all,
        "hard_negative": hard,
        "rank": rank,
        "rank_theta": theta,
    }
    for name, value in expected.items():
        assert_loss(terms[name].item(), value, logit_scale=20.0, msg=name)
    hard_block = 0.6 * region_to_all + 3.0 * hard + 0.4 * rank
    assert_loss(terms["hard_block"].item(), hard_block, logit_scale=20.0)
    assert_loss(total.item(), sigmoid + 0.2 * regional + 0.1 * tic + 0.5 * hard_block, logit_scale=20.0)
    assert "rank_loss.theta" in FGCLIP2Loss().state_dict()


def test_half_precision_inputs_are_computed_in_float32():
    images, texts = randn(4, 8, seed=400), randn(4, 8, seed=401)
    scale = torch.tensor(LOG_SCALE)
    loss = GlobalContrastiveLoss()(images.bfloat16(), texts.bfloat16(), scale)
    assert loss.dtype == torch.float32
    rounded_images, rounded_texts = images.bfloat16().double(), texts.bfloat16().double()
    expected = info_nce_reference(unit_rows(rounded_images), unit_rows(rounded_texts), scale_of(LOG_SCALE))
    assert_loss(loss, expected, dtype=torch.float32)


def test_losses_run_in_float32_inside_autocast():
    regions, candidates = randn(4, 8, seed=410).float(), randn(4, 11, 8, seed=411).float()
    scale = torch.tensor(math.log(50.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and (regions @ regions.T).dtype == torch.bfloat16
        loss = HardNegativeLoss()(regions, candidates, scale)
        terms = FGCLIP2Loss()(
            regions, {"short": regions.flip(0)}, scale, torch.tensor(-1.0),
            hard_region_embeds=regions, hard_candidate_embeds=candidates, logit_scale_hardneg=scale,
        )[1]
    assert loss.dtype == torch.float32
    expected = hard_negative_reference(unit_rows(regions), unit_rows(candidates), [[True] * 11] * 4, 50.0)
    assert_loss(loss.item(), expected, logit_scale=50.0, dtype=torch.float32)
    assert_loss(terms["hard_negative"].item(), expected, logit_scale=50.0, dtype=torch.float32)


# ----------------------------------------------------------------------------- temperatures
def test_clamp_logit_scales_bounds_every_temperature_in_place():
    model = nn.Module()
    model.logit_scale = nn.Parameter(torch.tensor(5.0))
    model.logit_scale_finegraind = nn.Parameter(torch.tensor([-0.5]))  # (1,) as held for DeepSpeed
    model.logit_scale_hardneg = nn.Parameter(torch.tensor(3.0))
    model.logit_bias = nn.Parameter(torch.tensor(7.0))
    wrapper = nn.ModuleDict({"model": model})
    scale = model.logit_scale
    clamp_logit_scales(wrapper)
    assert model.logit_scale is scale and scale.item() == pytest.approx(math.log(100.0))
    assert model.logit_scale_finegraind.tolist() == [0.0]
    assert model.logit_scale_hardneg.item() == 3.0 and model.logit_bias.item() == 7.0
    clamp_logit_scales(model, max_scale=10.0)
    assert model.logit_scale.item() == model.logit_scale_hardneg.item() == pytest.approx(math.log(10.0))
    with pytest.raises(ValueError, match="has no logit_scale parameter"):
        clamp_logit_scales(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_scale"):
        clamp_logit_scales(model, max_scale=1.0)
