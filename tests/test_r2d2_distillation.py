"""R2D2's two-way distillation in the re-ranker training step: soft targets, soft cross entropy,
the EMA update, the token masking and the teacher queues' ring buffer by hand on tiny tensors; a
distilled step (target- and feature-guided), a pre-ranking step and a queued pre-ranking step (ALBEF's
queues) against pair-by-pair hand computations; the recipe options; the shipped R2D2 recipe."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.data import FineHARDCollator, FineHARDDataset
from fgclip.data.shapes import write_shapes_dataset
from fgclip.rerank import CrossEncoderReranker, CrossEncoderRerankerConfig, RerankerForTraining, sample_hard_negatives
from fgclip.rerank.distillation import (
    Distillation,
    FeatureQueues,
    ema_update,
    mask_tokens,
    soft_cross_entropy,
    soft_targets,
)
from fgclip.testing import tiny_config
from fgclip.training import load_config
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[1]


def tiny_reranker(seed=0, **options) -> CrossEncoderReranker:
    torch.manual_seed(seed)
    return CrossEncoderReranker(CrossEncoderRerankerConfig(
        image_width=32, text_width=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, dropout=0.0, **options))


# ---------------------------------------------------------------------------------------- the pieces by hand
def test_soft_targets_and_soft_cross_entropy_by_hand():
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # softmax: (0.5, 0.5) and (e^2, 1) / (e^2 + 1)
    mixed = soft_targets(hard, teacher, 0.4)
    p = torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1)
    torch.testing.assert_close(mixed, torch.tensor([[0.6 + 0.2, 0.2], [0.4 * p, 0.6 + 0.4 * (1 - p)]]))
    logits = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    log_p = torch.log(torch.tensor([[torch.e ** 2 / (torch.e ** 2 + 1), 1 / (torch.e ** 2 + 1)], [0.5, 0.5]]))
    expected = -((mixed * log_p).sum(1)).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, mixed), expected)
    torch.testing.assert_close(soft_cross_entropy(logits, hard), F.cross_entropy(logits, torch.tensor([0, 1])))
    torch.testing.assert_close(soft_targets(hard, teacher, 0.0), hard)
    labels = torch.tensor([0, 1, 1, 0, 0])  # R2D2's class-weighted loss: F.cross_entropy(weight=[1, 2])
    many = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft_cross_entropy(many, F.one_hot(labels, 2).float(), 1.0 + labels.float()),
                               F.cross_entropy(many, labels, weight=torch.tensor([1.0, 2.0])))


def test_ema_update_by_hand():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.bias.fill_(4.0)
        teacher.weight.copy_(torch.tensor([[3.0, -2.0]]))
        teacher.bias.fill_(0.0)
    ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher.weight, torch.tensor([[0.75 * 3 + 0.25 * 1, 0.75 * -2 + 0.25 * 2]]))
    torch.testing.assert_close(teacher.bias, torch.tensor([1.0]))
    ema_update(teacher, student, 0.5)
    torch.testing.assert_close(teacher.bias, torch.tensor([2.5]))


def test_mask_tokens_hides_the_ratio_of_real_tokens_and_keeps_one():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    masked = mask_tokens(mask, 0.5, torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [2, 1, 1, 3]  # round(0.5 * n), at least one left
    assert bool((masked <= mask).all())  # padding stays padding
    again = mask_tokens(mask, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)
    assert mask_tokens(mask, 1.0, torch.Generator()).sum(1).tolist() == [1, 1, 1, 1]


def test_feature_queues_are_seeded_unit_rows_and_a_ring_buffer():
    queues = FeatureQueues(4, 3, seed=7)
    assert [name for name, _ in queues.named_buffers()] == ["images", "texts", "pointer"]
    torch.testing.assert_close(queues.images.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(queues.texts.norm(dim=1), torch.ones(4))
    assert not torch.equal(queues.images, queues.texts) and int(queues.pointer) == 0
    again, other = FeatureQueues(4, 3, seed=7), FeatureQueues(4, 3, seed=8)
    assert torch.equal(again.images, queues.images) and torch.equal(again.texts, queues.texts)
    assert not torch.equal(other.images, queues.images)

    start_images, start_texts = queues.images.clone(), queues.texts.clone()
    pushes = [torch.full((2, 3), float(n)) for n in range(1, 4)]  # batches 1, 2, 3: rows 0-1, 2-3, then 0-1 again
    queues.push(pushes[0], -pushes[0])
    assert int(queues.pointer) == 2
    assert torch.equal(queues.images, torch.cat([pushes[0], start_images[2:]]))
    assert torch.equal(queues.texts, torch.cat([-pushes[0], start_texts[2:]]))
    queues.push(pushes[1], -pushes[1])
    assert int(queues.pointer) == 0  # wrapped around
    assert torch.equal(queues.images, torch.cat([pushes[0], pushes[1]]))
    queues.push(pushes[2], -pushes[2])
    assert int(queues.pointer) == 2
    assert torch.equal(queues.images, torch.cat([pushes[2], pushes[1]]))
    assert torch.equal(queues.texts, -torch.cat([pushes[2], pushes[1]]))
    with pytest.raises(ValueError, match=r"distill_queue_size: 4 is not a multiple of the global batch 3"):
        queues.push(torch.zeros(3, 3), torch.zeros(3, 3))


# ---------------------------------------------------------------------------------------- steps by hand
def reranker_terms(reranker: CrossEncoderReranker, images, texts) -> int:
    """The student's and the teacher's cross encoder over image and text tokens (padded batch or one pair)."""
    return 2 * tower_terms(reranker.config, images.tokens.shape[1] + texts.tokens.shape[1])


def assert_pre_ranking(step: RerankerForTraining, output: dict, expected: torch.Tensor) -> None:
    """The step encodes with gradients (the training kernels), the hand computation without: both towers'
    rounding, at the scale of the logits."""
    config = step.dual_encoder.config
    terms = tower_terms(config.text_config, 77) + tower_terms(config.vision_config, 17)
    scale = max(abs(expected.item()), step.dual_encoder.logit_scale.exp().item())
    assert_close_to_reference(output["terms"]["pre_ranking"], expected, terms=terms, scale=scale)


@pytest.fixture(scope="module")
def batch_and_dual(tmp_path_factory):
    root = tmp_path_factory.mktemp("r2d2_shapes")
    write_shapes_dataset(root, seed=4, num_train=12, num_test=1, image_size=32)
    torch.manual_seed(0)
    dual = FGCLIPModel(tiny_config())
    processor = FGCLIPProcessor.for_config(dual.config)
    samples = [FineHARDDataset(root / "train.jsonl", root, processor)[i] for i in range(5)]
    return FineHARDCollator(processor)(samples), dual.state_dict()


def perturbed_teacher(step: RerankerForTraining) -> dict[str, torch.Tensor]:
    torch.manual_seed(11)
    with torch.no_grad():
        for parameter in step.teacher.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return {name: value.clone() for name, value in step.teacher.state_dict().items()}


def test_distilled_ranking_step_by_hand(batch_and_dual):
    batch, weights = batch_and_dual
    dual = FGCLIPModel(tiny_config())
    dual.load_state_dict(weights)
    distill = Distillation(momentum=0.8, target_weight=0.4, feature_weight=2.0, feature_mask_ratio=0.5)
    step = RerankerForTraining(dual, tiny_reranker(positive_weight=2.0), text_kind="short", negatives=2, seed=9,
                               distillation=distill)
    before = perturbed_teacher(step)
    student = {name: value.clone() for name, value in step.reranker.state_dict().items()}
    generator = step._generator()
    output = step.train()(**batch)
    output["loss"].backward()
    assert all(p.grad is None for p in step.teacher.parameters()) and all(p.grad is None for p in dual.parameters())
    for name, value in step.teacher["reranker"].state_dict().items():  # EMA before use
        torch.testing.assert_close(value, 0.8 * before[f"reranker.{name}"] + 0.2 * student[name], msg=name)

    teacher = step.teacher["reranker"]
    with torch.no_grad():
        images, texts = step.encode(batch)
        similarity = F.normalize(images.embeds, dim=-1) @ F.normalize(texts.embeds, dim=-1).T
        hard_texts = sample_hard_negatives(similarity, 2, generator)
        hard_images = sample_hard_negatives(similarity.T, 2, generator)
        masked = mask_tokens(texts.mask, 0.5, generator)
        pairs = [(i, i, 1) for i in range(5)] + [(i, int(t), 0) for i in range(5) for t in hard_texts[i]] + \
            [(int(i), t, 0) for t in range(5) for i in hard_images[t]]
        ce = {"text_query": [], "image_query": []}
        squared = {"text_query": [], "image_query": []}
        for image, text, label in pairs:  # one pair at a time, real tokens only
            image_args = (images.tokens[image : image + 1], images.mask[image : image + 1])
            keep, full = masked[text].bool(), texts.mask[text].bool()
            mine = step.reranker(*image_args, texts.tokens[text : text + 1, keep], torch.ones(1, int(keep.sum())))
            theirs = teacher(*image_args, texts.tokens[text : text + 1, full], torch.ones(1, int(full.sum())))
            for name in ce:
                teacher_probabilities = F.softmax(getattr(theirs, f"{name}_logits"), -1)
                target = 0.6 * F.one_hot(torch.tensor([label]), 2) + 0.4 * teacher_probabilities
                ce[name].append(-(target * F.log_softmax(getattr(mine, f"{name}_logits"), -1)).sum())
                squared[name].append(((getattr(mine, f"{name}_features") - getattr(theirs, f"{name}_features")) ** 2
                                      ).mean())
    weights = torch.tensor([2.0 if label else 1.0 for _, _, label in pairs])
    expected = {"text_queries": (weights * torch.stack(ce["text_query"])).sum() / weights.sum(),
                "image_queries": (weights * torch.stack(ce["image_query"])).sum() / weights.sum(),
                "feature_distillation": 2.0 * sum(torch.stack(values).mean() for values in squared.values())}
    assert set(output["terms"]) == set(expected)
    terms = reranker_terms(step.reranker, images, texts)
    for name, value in expected.items():
        assert_close_to_reference(output["terms"][name], value, terms=terms, msg=name)
    assert_close_to_reference(output["loss"], sum(expected.values()), terms=terms)


def test_pre_ranking_step_by_hand(batch_and_dual):
    batch, weights = batch_and_dual
    dual = FGCLIPModel(tiny_config())
    dual.load_state_dict(weights)
    step = RerankerForTraining(dual, tiny_reranker(), text_kind="short", negatives=1, seed=2,
                               distillation=Distillation(momentum=0.5, target_weight=0.3), pre_ranking=True)
    assert set(step.teacher) == {"reranker", "dual_encoder"}
    before = perturbed_teacher(step)
    student = {name: value.clone() for name, value in dual.state_dict().items()}
    output = step.train()(**batch)
    output["loss"].backward()
    assert dual.logit_scale.grad is not None and dual.vision_model.embeddings.patch_embedding.weight.grad is not None
    for name, value in step.teacher["dual_encoder"].state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * before[f"dual_encoder.{name}"] + 0.5 * student[name], msg=name)

    with torch.no_grad():
        images, texts = step.encode(batch)
        taught_images, taught_texts = step.encode(batch, step.teacher["dual_encoder"])
        logits = dual.logit_scale.exp() * F.normalize(images.embeds, dim=-1) @ F.normalize(texts.embeds, dim=-1).T
        taught = step.teacher["dual_encoder"].logit_scale.exp() * \
            F.normalize(taught_images.embeds, dim=-1) @ F.normalize(taught_texts.embeds, dim=-1).T
        eye = torch.eye(5)
        i2t = -((0.7 * eye + 0.3 * F.softmax(taught, 1)) * F.log_softmax(logits, 1)).sum(1).mean()
        t2i = -((0.7 * eye + 0.3 * F.softmax(taught.T, 1)) * F.log_softmax(logits.T, 1)).sum(1).mean()
    assert_pre_ranking(step, output, (i2t + t2i) / 2)
    assert set(output["terms"]) == {"pre_ranking", "text_queries", "image_queries"}


def queued_direction_by_hand(scale, student_rows, teacher_rows, columns, weight):
    """ALBEF's queued InfoNCE of one direction, row by row and column by column: row i's target is
    (1 - weight) on column i (the batch positive) plus weight x the teacher row's softmax over the columns."""
    unit = [column / column.norm() for column in columns]
    total = 0.0
    for i, (student, teacher) in enumerate(zip(student_rows, teacher_rows)):
        mine = [scale * (student / student.norm()) @ column for column in unit]
        theirs = [scale * (teacher / teacher.norm()) @ column for column in unit]
        log_partition = torch.log(sum(torch.exp(value) for value in mine))
        teacher_partition = sum(torch.exp(value) for value in theirs)
        for j in range(len(unit)):
            target = (1 - weight) * (j == i) + weight * torch.exp(theirs[j]) / teacher_partition
            total = total - target * (mine[j] - log_partition)
    return total / len(student_rows)


def test_queued_pre_ranking_step_by_hand(batch_and_dual):
    batch, weights = batch_and_dual
    dual = FGCLIPModel(tiny_config())
    dual.load_state_dict(weights)
    step = RerankerForTraining(dual, tiny_reranker(), text_kind="short", negatives=1, seed=3,
                               distillation=Distillation(momentum=0.5, target_weight=0.3, queue_size=10),
                               pre_ranking=True)
    assert {"queues.images", "queues.texts", "queues.pointer"} <= set(step.state_dict())
    assert step.queues.images.shape == (10, dual.config.projection_dim)
    perturbed_teacher(step)
    queued_images, queued_texts = step.queues.images.clone(), step.queues.texts.clone()
    output = step.train()(**batch)
    output["loss"].backward()
    assert dual.logit_scale.grad is not None and dual.vision_model.embeddings.patch_embedding.weight.grad is not None

    with torch.no_grad():
        images, texts = step.encode(batch)
        taught_images, taught_texts = step.encode(batch, step.teacher["dual_encoder"])  # after its EMA update
        scale = dual.logit_scale.exp()
        i2t = queued_direction_by_hand(scale, images.embeds, taught_images.embeds,
                                       [*taught_texts.embeds, *queued_texts], 0.3)
        t2i = queued_direction_by_hand(scale, texts.embeds, taught_texts.embeds,
                                       [*taught_images.embeds, *queued_images], 0.3)
    assert_pre_ranking(step, output, (i2t + t2i) / 2)
    # the teacher's batch went into rows 0-4, the oldest; the next step's into rows 5-9, then back to row 0
    first_images = F.normalize(taught_images.embeds, dim=-1)
    first_texts = F.normalize(taught_texts.embeds, dim=-1)
    torch.testing.assert_close(step.queues.images, torch.cat([first_images, queued_images[5:]]))
    torch.testing.assert_close(step.queues.texts, torch.cat([first_texts, queued_texts[5:]]))
    assert int(step.queues.pointer) == 5
    step(**batch)
    with torch.no_grad():
        second_images, second_texts = step.encode(batch, step.teacher["dual_encoder"])
    torch.testing.assert_close(step.queues.images, torch.cat([first_images, F.normalize(second_images.embeds, dim=-1)]))
    torch.testing.assert_close(step.queues.texts, torch.cat([first_texts, F.normalize(second_texts.embeds, dim=-1)]))
    assert int(step.queues.pointer) == 0
    before = step.queues.images.clone()
    step.eval()(**batch)  # evaluation reads the queues and leaves them
    assert torch.equal(step.queues.images, before) and int(step.queues.pointer) == 0


def test_queue_size_zero_is_the_unqueued_loss_and_the_queue_needs_pre_ranking_and_whole_batches(batch_and_dual):
    batch, weights = batch_and_dual

    def step(queue_size, pre_ranking=True):
        dual = FGCLIPModel(tiny_config())
        dual.load_state_dict(weights)
        return RerankerForTraining(dual, tiny_reranker(), text_kind="short", negatives=1, seed=3,
                                   pre_ranking=pre_ranking, distillation=Distillation(momentum=0.5, target_weight=0.3, queue_size=queue_size))

    plain = step(0)
    assert plain.queues is None and not any(key.startswith("queues") for key in plain.state_dict())
    with pytest.raises(ValueError, match="distill_queue_size: the queues widen the pre-ranking loss; set pre_ranking"):
        step(10, pre_ranking=False)
    with pytest.raises(ValueError, match=r"distill_queue_size: 8 is not a multiple of the global batch 5"):
        step(8).train()(**batch)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"distill_queue_size: expected an integer >= 0"):
            Distillation(momentum=0.5, queue_size=bad)
    with pytest.raises(ValueError, match=r"distill_queue_size needs a teacher .*: set distill_momentum"):
        Distillation(queue_size=8)


def test_without_options_the_step_has_no_teacher_and_keeps_the_dual_encoder_frozen(batch_and_dual):
    batch, weights = batch_and_dual
    dual = FGCLIPModel(tiny_config())
    step = RerankerForTraining(dual, tiny_reranker(), text_kind="short")
    assert step.teacher is None and not step.pre_ranking and not any(p.requires_grad for p in dual.parameters())
    assert not any(key.startswith("teacher") for key in step.state_dict())


# ---------------------------------------------------------------------------------------- recipes
def test_shipped_r2d2_recipes_switch_distillation_on_and_fgclip_recipes_leave_it_off():
    config = load_config(REPO / "configs" / "r2d2" / "rerank_fgclip_vitb16.yaml")
    options = config.model.reranker
    assert options["distill_momentum"] == 0.995 and options["distill_target_weight"] == 0.4
    assert options["distill_feature_weight"] == 1.0 and options["distill_feature_mask_ratio"] == 0.15
    assert options["negatives"] == 1 and options["positive_weight"] == 2.0  # R2D2's fine-tuning code
    assert config.training["dataloader_drop_last"] is True
    bilingual = load_config(REPO / "configs" / "r2d2" / "rerank_fgclip2_base.yaml")
    assert bilingual.model.family == "fgclip2" and bilingual.model.reranker == options
    miniature = load_config(REPO / "configs" / "r2d2" / "shapes_rerank.yaml")
    assert miniature.model.reranker["pre_ranking"] is True
    queue_size, batch = miniature.model.reranker["distill_queue_size"], miniature.training["per_device_train_batch_size"]
    assert queue_size > batch and queue_size % batch == 0  # ALBEF's queues take whole global batches
    assert "distill_queue_size" not in options  # no pre_ranking, no queues
    for recipe in sorted([*REPO.glob("configs/fgclip/[!_]*.yaml"), *REPO.glob("configs/fgclip2/[!_]*.yaml")]):
        assert load_config(recipe).model.reranker is None, recipe
    defaults = CrossEncoderRerankerConfig()
    assert not Distillation.from_config(defaults).enabled and defaults.pre_ranking is False


@pytest.mark.parametrize("override, message", [
    ("model.reranker.distill_target_weight=0.4", "need a teacher: set distill_momentum"),
    ("model.reranker.distill_momentum=1.0", r"distill_momentum: expected a value in \[0, 1\)"),
    ("model.reranker.distill_target_weight=1.5", r"distill_target_weight: expected a value in \[0, 1\]"),
    ("model.reranker.distill_feature_mask_ratio=0.0", "set distill_feature_mask_ratio > 0"),
    ("model.reranker.distill_temperature=2", r"unknown key\(s\) \['distill_temperature'\]"),
    ("model.reranker.distill_queue_size=-4", r"distill_queue_size: expected an integer >= 0, got -4"),
    ("model.reranker.distill_queue_size=8", r"distill_queue_size needs a teacher .*: set distill_momentum"),
])
def test_bad_distillation_options_name_the_recipe_and_key(override, message):
    recipe = REPO / "configs" / "r2d2" / "rerank_fgclip_vitb16.yaml"
    extra = ["model.reranker.distill_momentum=null", "model.reranker.distill_target_weight=0.0",
             "model.reranker.distill_feature_weight=0.0"] if "a teacher" in message else []
    with pytest.raises(ValueError, match=f"{recipe}: model.reranker: .*{message}"):
        load_config(recipe, [*extra, override])
