"""FG-CLIP v1's stage-2 loss on a tiny official-format checkpoint against the official code's values.

The expected values below were printed by the official FG-CLIP v1 code (360CVGroup/FG-CLIP,
branch v1.0, commit 0fcea59: ``FGCLIPModel.forward`` of ``fgclip/model/clip_strc/fgclip.py``
with ``add_box_loss`` and ``use_hard_neg``, and the temperature copy of the stage-2 launch in
``fgclip/train/train_fgclip.py``), run under transformers 4.41 and torch 2.14.1 in float32 on
``tests/data/fgclip_v1_official`` (see its README). Upstream casts the RoI features to bf16;
for the run that cast was made a float32 one, nothing else changed. Values: the loss, its four
terms, the gradients of the three temperatures and the gradient norms of the three projections.

Runs: one process on the 4 images, and 2 gloo processes with images 0-1 on rank 0 (4 boxes,
3 regions with negatives) and images 2-3 on rank 1 (6 boxes, 4 regions). Cases:
``stage2_start``: the checkpoint's ``logit_scale`` 4.6052 (exp = 100.003) copied into the two
region temperatures (stored as 2.6592 and 3.0), as the launch does; ``above_ln100``: the three
log scales set to 5.0, 4.8 and 5.3 (exp = 148, 122, 200).
"""
from __future__ import annotations

import functools
import math
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from fgclip import FGCLIPModel
from fgclip.losses import FGCLIPLoss, copy_logit_scale_to_region_scales
from fgclip.training import load_config
from forked_ranks import run_forked_ranks
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "fgclip_v1_official"
RECIPES = REPO / "configs"
SCALES = ("logit_scale", "logit_scale_finegraind", "logit_scale_hardneg")
PROJECTIONS = ("visual_projection", "text_projection", "text_filip_projection")
CASES = {"stage2_start": None, "above_ln100": (5.0, 4.8, 5.3)}
WORLD_SIZE = 2
DEADLINE_SECONDS = 180.0


def official(loss, long, short, regional, hard, grads, grad_norms) -> dict[str, float]:
    values = {"loss": loss, "global_long": long, "global_short": short, "regional": regional, "hard_negative": hard}
    values.update({f"grad_{name}": value for name, value in zip(SCALES, grads)})
    values.update({f"grad_norm_{name}": value for name, value in zip(PROJECTIONS, grad_norms)})
    return values


# Printed by the official code (360CVGroup/FG-CLIP v1.0, commit 0fcea59), see the module docstring.
OFFICIAL_ONE_PROCESS = {
    "stage2_start": official(51.788414, 20.171261, 10.700762, 32.740768, 35.284630,
                             (30.667601, 3.2608175, 17.511200), (73.876907, 24.090164, 55.769287)),
    "above_ln100": official(84.952286, 29.868692, 15.875414, 39.757362, 70.464890,
                            (45.645645, 3.9658699, 35.141552), (118.46678, 43.381500, 82.628197)),
}
OFFICIAL_TWO_RANKS = [
    {
        "stage2_start": official(57.294594, 23.943525, 13.520510, 9.6950998, 37.722095,
                                 (37.314022, 0.96827936, 18.634132), (238.99961, 34.389229, 41.492847)),
        "above_ln100": official(94.310234, 35.487865, 20.059057, 11.778370, 75.170952,
                                (55.474144, 1.1773019, 37.404839), (363.28543, 60.511478, 61.327423)),
    },
    {
        "stage2_start": official(45.343086, 16.399002, 7.8810158, 43.348072, 33.456524,
                                 (24.021179, 4.3347588, 16.669001), (170.57009, 30.856245, 79.368599)),
        "above_ln100": official(74.676048, 24.249519, 11.691772, 52.670815, 66.935349,
                                (35.817146, 5.2670708, 33.444080), (258.34686, 54.301357, 117.68907)),
    },
]


# ----------------------------------------------------------------------------- our side
def load_batch() -> dict[str, torch.Tensor]:
    return {name: value if value.is_floating_point() else value.long()
            for name, value in load_file(DATA / "batch.safetensors").items()}


def load_model(case: str) -> FGCLIPModel:
    """The checkpoint in float32 with the case's temperatures."""
    model = FGCLIPModel.from_pretrained(DATA, dtype=torch.float32)
    if CASES[case] is None:
        copy_logit_scale_to_region_scales(model)
    else:
        with torch.no_grad():
            for name, value in zip(SCALES, CASES[case]):
                getattr(model, name).fill_(value)
    return model


def stage2_step(model: FGCLIPModel, batch: dict[str, torch.Tensor], images: range, region_scope: str = "rank") -> dict:
    """Our stage-2 loss on ``images`` of the batch, backward; values named as in :func:`official`,
    plus the projections' gradient tensors."""
    pixels = batch["pixel_values"][images.start:images.stop]
    size = pixels.shape[-1]  # boxes: normalised -> input pixels
    boxes = [batch["box_infos"][i, : batch["box_nums"][i]] * size for i in images]
    hard_boxes = [batch["hard_infos"][i, : batch["hard_nums"][i]] * size for i in images]
    region_ids = torch.cat([batch["box_texts"][4 * i: 4 * i + batch["box_nums"][i]] for i in images])
    first, count = int(batch["hard_nums"][: images.start].sum()), sum(int(batch["hard_nums"][i]) for i in images)
    candidate_ids = batch["hard_texts"][11 * first: 11 * (first + count)]

    def text(ids: torch.Tensor, kind: str) -> torch.Tensor:
        return model.get_text_features(ids, text_kind=kind)

    total, terms = FGCLIPLoss(region_scope=region_scope)(
        model.get_image_features(pixels),
        {"long": text(batch["text_long"][images.start:images.stop], "long"),
         "short": text(batch["text_short"][images.start:images.stop], "short")},
        model.logit_scale,
        region_embeds=model.get_region_features(pixels, boxes),
        region_text_embeds=text(region_ids, "region"),
        logit_scale_finegraind=model.logit_scale_finegraind,
        hard_region_embeds=model.get_region_features(pixels, hard_boxes),
        hard_candidate_embeds=text(candidate_ids, "region").reshape(count, 11, -1),
        logit_scale_hardneg=model.logit_scale_hardneg,
    )
    total.backward()
    values = {"loss": total.item(), **{name: terms[name].item() for name in
                                       ("global_long", "global_short", "regional", "hard_negative")}}
    values.update({f"grad_{name}": getattr(model, name).grad.item() for name in SCALES})
    grads = {name: getattr(model, name).weight.grad.clone() for name in PROJECTIONS}
    values.update({f"grad_norm_{name}": grad.norm().item() for name, grad in grads.items()})
    return {"values": values, "projection_grads": grads}


@functools.cache
def value_terms() -> int:
    """Forward and backward through the long-text and image towers, the projections' gradients summed
    over the batch's texts, and their norms; one more for the official values' 8 printed digits."""
    config = FGCLIPModel.config_class.from_pretrained(DATA)
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    towers = tower_terms(config.text_config, 248) + tower_terms(vision, 1 + patches)
    texts = sum(load_batch()[key].shape[0] for key in ("text_long", "text_short", "box_texts", "hard_texts"))
    return 2 * towers + texts + config.projection_dim * config.text_config.hidden_size + 1


def assert_value(value: float, expected: float, name: str, case: str, where: str) -> None:
    """float32 values within the rounding bound; the losses and the temperatures' gradients sum terms
    (logits) up to the largest temperature."""
    logits = math.exp(max(CASES[case] or (4.6052,)))
    scale = abs(expected) if name.startswith("grad_norm_") else max(abs(expected), logits)
    assert_close_to_reference(value, expected, terms=value_terms(), dtype=torch.float32, scale=scale,
                              msg=f"{where}: {name}")


def assert_values(values: dict[str, float], expected: dict[str, float], case: str, where: str) -> None:
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert_value(values[name], value, name, case, where)


# ----------------------------------------------------------------------------- one process
@pytest.mark.parametrize("case", list(CASES))
def test_one_process_equals_official(case):
    result = stage2_step(load_model(case), load_batch(), range(4))
    assert_values(result["values"], OFFICIAL_ONE_PROCESS[case], case, case)


def test_copy_logit_scale_to_region_scales_as_the_stage2_launch():
    model = FGCLIPModel.from_pretrained(DATA, dtype=torch.float32)
    stored = [getattr(model, name).item() for name in SCALES]
    assert stored == pytest.approx([4.6052, 2.6592, 3.0], abs=1e-6)
    parameters = [getattr(model, name) for name in SCALES]
    model.logit_scale_hardneg.data = model.logit_scale_hardneg.data.reshape(1)  # (1,) as held for DeepSpeed
    copy_logit_scale_to_region_scales(model)
    assert all(getattr(model, name) is parameter for name, parameter in zip(SCALES, parameters))  # in place
    assert model.logit_scale_finegraind.item() == model.logit_scale_hardneg.item() == model.logit_scale.item()
    assert all(parameter.requires_grad for parameter in parameters)
    clip_like = torch.nn.Module()
    clip_like.logit_scale = torch.nn.Parameter(torch.tensor(4.6052))
    with pytest.raises(ValueError, match="Module has no parameter 'logit_scale_finegraind'"):
        copy_logit_scale_to_region_scales(clip_like)


# ----------------------------------------------------------------------------- two ranks
def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=60))
    try:
        batch, images = load_batch(), range(2 * rank, 2 * rank + 2)
        results = {(case, scope): stage2_step(load_model(case), batch, images, scope)
                   for case in CASES for scope in ("rank", "global")}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    """Both cases and both region scopes on 2 forked gloo processes; each rank's results."""
    return run_forked_ranks(_worker, tmp_path_factory.mktemp("losses_official"), WORLD_SIZE, DEADLINE_SECONDS)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_official_per_rank_values(rank_results, case):
    """Default region scope: rank r's loss, terms and gradients are the official rank r's."""
    for rank, results in enumerate(rank_results):
        assert_values(results[(case, "rank")]["values"], OFFICIAL_TWO_RANKS[rank][case], case, f"{case}, rank {rank}")


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_global_region_scope_equals_official_one_process(rank_results, case):
    """``region_scope="global"``: averaged over ranks (as DDP averages gradients), loss, terms and
    gradients are the official single-process values of the joined batch."""
    per_rank = [results[(case, "global")] for results in rank_results]
    expected = OFFICIAL_ONE_PROCESS[case]
    for name, value in expected.items():
        if name.startswith("grad_norm_"):
            grad = sum(result["projection_grads"][name.removeprefix("grad_norm_")] for result in per_rank) / WORLD_SIZE
            mean = grad.norm().item()
        else:
            mean = sum(result["values"][name] for result in per_rank) / WORLD_SIZE
        assert_value(mean, value, name, case, case)
    per_rank_regional = sum(results[(case, "rank")]["values"]["regional"] for results in rank_results) / WORLD_SIZE
    assert abs(per_rank_regional - expected["regional"]) > 1.0  # the two scopes really differ here


# ----------------------------------------------------------------------------- recipes
def test_fgclip_recipes_select_the_official_semantics():
    for name in ("stage1_vitb16", "stage1_vitl14", "shapes_stage1", "stage2_vitb16", "stage2_vitl14",
                 "shapes_stage2"):
        loss = load_config(RECIPES / "fgclip" / f"{name}.yaml").loss
        assert loss.region_scales_from_logit_scale is name.startswith(("stage2", "shapes_stage2")), name
        assert (loss.region_scope, loss.max_logit_scale) == ("rank", None), name
        arguments = loss.loss_arguments("fgclip")
        assert arguments == {"regional_weight": 0.1, "hard_negative_weight": 0.5, "region_scope": "rank"}, name
        assert not FGCLIPLoss(**arguments).regional_loss.across_ranks
    joined = load_config(RECIPES / "fgclip" / "stage2_vitb16.yaml", ["loss.region_scope=global",
                                                                    "loss.max_logit_scale=100"]).loss
    assert FGCLIPLoss(**joined.loss_arguments("fgclip")).hard_negative_loss.across_ranks
    assert joined.max_logit_scale == 100


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.region_scope=local"], r"loss\.region_scope: expected one of rank, global, got 'local'"),
    (["loss.max_logit_scale=1"], r"loss\.max_logit_scale: expected a value above 1"),
])
def test_recipe_rejects_bad_temperature_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(RECIPES / "fgclip" / "stage2_vitb16.yaml", overrides)


def test_fgclip2_recipe_rejects_fgclip_only_options():
    recipe = next((RECIPES / "fgclip2").glob("stage2*.yaml"))
    load_config(recipe)
    for option in ("loss.region_scope=rank", "loss.region_scales_from_logit_scale=true"):
        with pytest.raises(ValueError, match=rf"{option.split('=')[0]}: FG-CLIP only"):
            load_config(recipe, [option])
