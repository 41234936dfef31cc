"""FGCLIPForTraining on FG-CLIP 2: one stage-2 step against a reference that embeds every text kind
with its own tower call and head and every image's regions with its own pass, then applies a fresh
FGCLIP2Loss; the collated NaFlex batch and text masks; the step's gradients."""
from __future__ import annotations

import json
import re

import pytest
import torch

from fgclip import FGCLIP2Model, FGCLIP2Processor
from fgclip.data import FineHARDCollator, FineHARDDataset
from fgclip.data.shapes import write_shapes_dataset
from fgclip.losses import FGCLIP2Loss
from fgclip.testing import tiny_fgclip2_config, tiny_word_tokenizer
from fgclip.training.module import FGCLIPForTraining


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, seed=3, num_train=8, num_test=1, image_size=32)
    return root


def vocabulary(path) -> list[str]:
    words = set()
    for line in path.read_text().splitlines():
        words.update(re.findall(r"\w+", json.dumps(json.loads(line), ensure_ascii=False).lower()))
    return sorted(words)


@pytest.fixture(scope="module")
def processor(shapes):
    return FGCLIP2Processor.for_config(tiny_fgclip2_config(), tiny_word_tokenizer(vocabulary(shapes / "train.jsonl")))


def reference_loss(model, step, processor, samples, regional, hard_negatives):
    images = [{key: sample[key][None] for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
              for sample in samples]
    image = torch.cat([model.get_image_features(**batch) for batch in images])
    long = model.get_text_features(**processor(text=[s["long_text"] for s in samples], text_kind="long"))
    short = model.get_text_features(**processor(text=[s["short_text"] for s in samples], text_kind="short"))
    regions = torch.cat([model.get_region_features(**batch, boxes=[sample["boxes"]])
                         for batch, sample in zip(images, samples)])
    extra = {}
    if regional:
        region_texts = [text for sample in samples for text in sample["region_texts"]]
        extra.update(region_embeds=regions, logit_scale_finegraind=model.logit_scale_finegraind,
                     region_text_embeds=model.get_text_features(**processor(text=region_texts, text_kind="region")))
    if hard_negatives:
        groups, region_rows, first = [], [], 0
        for sample in samples:
            for region, group in zip(sample["hard_negative_regions"], sample["hard_negative_texts"]):
                groups.append(model.get_text_features(**processor(text=group, text_kind="region")))
                region_rows.append(first + region)
            first += len(sample["region_texts"])
        extra.update(hard_region_embeds=regions[region_rows], hard_candidate_embeds=torch.stack(groups),
                     logit_scale_hardneg=model.logit_scale_hardneg)
    total, terms = FGCLIP2Loss()(image, {"long": long, "short": short}, model.logit_scale[0], model.logit_bias[0],
                                 **extra)
    return total, terms


@pytest.mark.parametrize("regional, hard_negatives", [(False, False), (True, True)])
def test_step_matches_separately_embedded_reference(shapes, processor, regional, hard_negatives):
    data = FineHARDDataset(shapes / "train.jsonl", shapes, processor, seed=11)
    samples = [data[index] for index in range(5)]
    assert any(sample["hard_negative_texts"] for sample in samples)
    torch.manual_seed(0)
    model = FGCLIP2Model(tiny_fgclip2_config(vocab_size=len(processor.tokenizer)))
    step = FGCLIPForTraining(model, FGCLIP2Loss(), regional=regional, hard_negatives=hard_negatives)
    with torch.no_grad():  # distinct temperatures, so a mixed-up scale shows in the loss
        model.logit_scale_finegraind.fill_(1.5)
        model.logit_scale_hardneg.fill_(3.0)
    batch = FineHARDCollator(processor, long_padding="max_length", short_padding="max_length")(samples)
    assert batch["pixel_values"].shape[:2] == batch["pixel_attention_mask"].shape == (5, 16)
    assert batch["long_input_ids"].shape == batch["long_attention_mask"].shape == (5, 196)
    assert batch["short_input_ids"].shape[1] == 64
    output = step(**batch)
    with torch.no_grad():
        expected, expected_terms = reference_loss(model, step, processor, samples, regional, hard_negatives)
    torch.testing.assert_close(output["loss"], expected, atol=1e-5, rtol=1e-5)
    assert set(output["terms"]) == set(expected_terms)
    assert step.text_tower_calls == 2
    output["loss"].backward()
    missing = [name for name, p in step.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert model.logit_scale_hardneg.requires_grad == hard_negatives
