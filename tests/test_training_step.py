"""FGCLIPForTraining: one stage-1 / stage-2 step against an upstream-style reference that
encodes every text kind separately, padded to 77 / 248 tokens, without de-duplication."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.data import FineHARDCollator, FineHARDDataset
from fgclip.data.shapes import write_shapes_dataset
from fgclip.losses import FGCLIPLoss
from fgclip.testing import tiny_config
from fgclip.training import FGCLIPForTraining
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

EOS = 49407


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, seed=3, num_train=8, num_test=1, image_size=32)
    return root


@pytest.fixture(scope="module")
def processor():
    return FGCLIPProcessor.for_config(tiny_config())


def tiny_model(seed: int = 0) -> FGCLIPModel:
    torch.manual_seed(seed)
    model = FGCLIPModel(tiny_config())
    with torch.no_grad():  # distinct temperatures, so a mixed-up scale shows in the loss
        model.logit_scale_finegraind.fill_(1.5)
        model.logit_scale_hardneg.fill_(3.0)
    return model


def dataset(path, root, processor) -> FineHARDDataset:
    return FineHARDDataset(path, root, processor, seed=11)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    labels = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def upstream_style_loss(model, processor, samples, regional: bool, hard_negatives: bool) -> torch.Tensor:
    """L_global + 0.1 L_regional + 0.5 L_hard with one text-tower call per kind (and per
    negative group), every call padded to the kind's full length, regions from a separate
    dense pass (`get_region_features`)."""
    pixels = torch.stack([sample["pixel_values"] for sample in samples])
    image = model.get_image_features(pixels)
    long = model.get_text_features(**processor(text=[s["long_text"] for s in samples], text_kind="long"))
    short = model.get_text_features(**processor(text=[s["short_text"] for s in samples], text_kind="short"))
    scale = model.logit_scale.exp().clamp(max=100)
    total = symmetric_info_nce(image, long, scale) + symmetric_info_nce(image, short, scale)
    regions = model.get_region_features(pixels, [s["boxes"] for s in samples])
    region_texts = [text for sample in samples for text in sample["region_texts"]]
    if regional and region_texts:
        region_text_embeds = model.get_text_features(**processor(text=region_texts, text_kind="region"))
        total = total + 0.1 * symmetric_info_nce(regions, region_text_embeds, model.logit_scale_finegraind.exp())
    if hard_negatives:
        per_region, first_region = [], 0
        for sample in samples:
            for region, group in zip(sample["hard_negative_regions"], sample["hard_negative_texts"]):
                candidates = model.get_text_features(**processor(text=group, text_kind="short"))
                logits = model.logit_scale_hardneg.exp() * (
                    F.normalize(candidates, dim=-1) @ F.normalize(regions[first_region + region], dim=-1))
                per_region.append(-torch.log_softmax(logits, dim=0)[0])
            first_region += len(sample["region_texts"])
        if per_region:
            total = total + 0.5 * torch.stack(per_region).mean()
    return total


@contextlib.contextmanager
def text_tower_spy(model):
    """Record the input_ids of every call of the text transformer (its embeddings run once per call)."""
    calls: list[torch.Tensor] = []
    embeddings = model.text_model.embeddings
    original = embeddings.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    embeddings.forward = spy
    try:
        yield calls
    finally:
        del embeddings.forward


def true_rows(processor, texts: list[str]) -> set[tuple[int, ...]]:
    """Each text's ids up to and including its first eos (from full-length padding)."""
    rows = set()
    for ids in processor(text=texts, text_kind="short")["input_ids"].tolist():
        rows.add(tuple(ids[: ids.index(EOS) + 1]))
    return rows


def ids_only(processor):
    """``processor`` for the collator, returning ids without attention masks, so the step encodes
    each text kind in one call (no length buckets)."""

    def texts_only(text, text_kind, padding):
        return {"input_ids": processor(text=text, text_kind=text_kind, padding=padding)["input_ids"]}

    texts_only.minimal_padding = processor.minimal_padding
    return texts_only


def run_step(samples, processor, regional=True, hard_negatives=True, seed=0):
    model = tiny_model(seed)
    step = FGCLIPForTraining(model, FGCLIPLoss(), regional=regional, hard_negatives=hard_negatives)
    batch = FineHARDCollator(ids_only(processor))(samples)
    with text_tower_spy(model) as calls:
        output = step(**batch)
    output["loss"].backward()
    with torch.no_grad():
        reference = upstream_style_loss(model, processor, samples, regional, hard_negatives)
    return model, step, output, calls, reference


def all_texts(samples) -> list[str]:
    texts = []
    for sample in samples:
        texts.append(sample["short_text"])
        texts.extend(sample["region_texts"])
        texts.extend(text for group in sample["hard_negative_texts"] for text in group)
    return texts


def assert_reference_loss(model, loss, reference):
    """Within the rounding of both towers (texts padded to 248 in the reference) and the loss's sums
    of cross-entropies, whose logits reach the largest temperature."""
    config = model.config
    terms = tower_terms(config.text_config, 248) + tower_terms(config.vision_config, 17) + 3 * config.projection_dim
    temperatures = (model.logit_scale, model.logit_scale_finegraind, model.logit_scale_hardneg)
    scale = max(abs(reference.item()), *(temperature.exp().item() for temperature in temperatures))
    assert_close_to_reference(loss.detach(), reference, terms=terms, scale=scale)


def assert_every_trainable_parameter_has_a_gradient(model):
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_stage2_step_two_text_calls_unique_texts_and_reference_loss(shapes, processor):
    data = dataset(shapes / "train.jsonl", shapes, processor)
    samples = [data[index] for index in range(6)]
    box_counts = [len(sample["region_texts"]) for sample in samples]
    assert len(set(box_counts)) > 1, "the batch should mix images with different numbers of boxes"
    model, step, output, calls, reference = run_step(samples, processor)

    assert step.text_tower_calls == 2 and len(calls) == 2
    long_ids, short_ids = calls
    assert long_ids.shape[0] == len(samples)
    texts = all_texts(samples)
    unique = set(texts)
    assert len(unique) < len(texts), "the shapes scenes repeat texts (negatives, short_expr)"
    assert short_ids.shape[0] == len(unique)  # no padded box / negative slot, no duplicate
    width = short_ids.shape[1]
    assert width == max(len(row) for row in true_rows(processor, list(unique))) < 77
    assert {tuple(row) for row in short_ids.tolist()} == {
        row + (EOS,) * (width - len(row)) for row in true_rows(processor, list(unique))}

    assert output["loss"].dtype == torch.float32
    assert set(output["terms"]) == {"global_long", "global_short", "global", "regional", "hard_negative"}
    assert_reference_loss(model, output["loss"], reference)
    assert_every_trainable_parameter_has_a_gradient(model)


def test_stage1_step_freezes_unused_temperatures(shapes, processor):
    data = dataset(shapes / "train.jsonl", shapes, processor)
    samples = [data[index] for index in range(4)]
    model, step, output, calls, reference = run_step(samples, processor, regional=False, hard_negatives=False)
    assert not model.logit_scale_finegraind.requires_grad and not model.logit_scale_hardneg.requires_grad
    assert model.logit_scale.requires_grad
    assert set(output["terms"]) == {"global_long", "global_short", "global"}
    assert_reference_loss(model, output["loss"], reference)
    assert_every_trainable_parameter_has_a_gradient(model)
    captions = list({sample["short_text"] for sample in samples})
    assert len(calls) == 2 and calls[1].shape[0] == len(captions)  # region / negative texts left out
    assert calls[1].shape[1] == max(len(row) for row in true_rows(processor, captions))


@pytest.fixture(scope="module")
def few_boxes(shapes):
    """Records with 0 boxes, 1 box with negatives, 1 box without negatives."""
    records = [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()]
    no_box = [dict(record, bbox_info=[]) for record in records[:2]]
    one_box = dict(records[2], bbox_info=records[2]["bbox_info"][:1])
    without_negatives = {key: value for key, value in records[3]["bbox_info"][0].items() if key != "short_expr_negs"}
    one_box_no_negatives = dict(records[3], bbox_info=[dict(without_negatives, flag_short_neg=0)])
    path = shapes / "few_boxes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*no_box, one_box, one_box_no_negatives]))
    return path


@pytest.mark.parametrize("indices, num_boxes, num_groups", [((0, 1), 0, 0), ((0, 2), 1, 1), ((1, 3), 1, 0)],
                         ids=["0 boxes", "1 box", "1 box without negatives"])
def test_batches_with_0_and_1_boxes(few_boxes, shapes, processor, indices, num_boxes, num_groups):
    data = dataset(few_boxes, shapes, processor)
    samples = [data[index] for index in indices]
    batch = FineHARDCollator(ids_only(processor))(samples)
    assert sum(len(b) for b in batch["boxes"]) == num_boxes
    assert batch["hard_negative_region_index"].shape == (num_groups,)
    model, step, output, calls, reference = run_step(samples, processor)
    assert torch.isfinite(output["loss"])
    assert_reference_loss(model, output["loss"], reference)
    assert output["terms"]["regional"].item() == 0.0  # InfoNCE over 0 or 1 region is 0
    if num_groups == 0:
        assert output["terms"]["hard_negative"].item() == 0.0
    else:
        assert output["terms"]["hard_negative"].item() > 0.0
    assert calls[1].shape[0] == len(set(all_texts(samples)))
    assert_every_trainable_parameter_has_a_gradient(model)
