"""Two gloo processes give the same loss and gradients as one process on the joined batch
(losses with ``across_ranks=True``) or as each rank alone (``across_ranks=False``, the official
FG-CLIP regional and hard-negative terms).

Each scenario splits a deterministic batch between 2 ranks (row counts may differ per
rank, including 0) and runs the loss on every rank. A joined-batch scenario is compared with
the single-process loss on the whole batch, with the scaling convention of fgclip.distributed:

* loss: the mean over ranks of the per-rank losses equals the joined-batch loss;
* inputs: a rank's gradient w.r.t. its own rows is the gradient of the SUM of all ranks'
  losses (the all-gather backward sums over ranks), i.e. world_size x the joined-batch
  gradient of those rows -- DDP's averaging of parameter gradients divides it back;
* logit scale / bias (replicated, like a DDP parameter): the mean over ranks of their
  gradients equals the joined-batch gradient.

A per-rank scenario is compared, rank by rank, with one process on that rank's rows.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist

from fgclip.losses import (
    CrossModalRankLoss,
    GlobalContrastiveLoss,
    HardNegativeLoss,
    RegionalContrastiveLoss,
    RegionToAllTextsLoss,
    SigmoidGlobalLoss,
)
from forked_ranks import run_forked_ranks
from numerics import assert_close_to_reference

pytestmark = pytest.mark.numerics

WORLD_SIZE = 2
# forward and backward: the normalisations and products of 8-dim rows, a log-sum-exp over up to 6 x 6
# texts, a mean over up to 6 rows
TERMS = 2 * (3 * 8 + 6 * 6 + 6)
DEADLINE_SECONDS = 120.0


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def negative_mask(count: int, candidates: int) -> torch.Tensor:
    """Positive always kept; row i keeps (i * 3) % candidates negatives."""
    kept = torch.tensor([(i * 3) % candidates for i in range(count)])
    return torch.arange(candidates).unsqueeze(0) <= kept.unsqueeze(1)


def candidates_near(regions: torch.Tensor, candidates: int, seed: int) -> torch.Tensor:
    """(R, candidates, D) texts whose positive (index 0) is close to its region."""
    texts = randn(regions.shape[0], candidates, regions.shape[1], seed=seed)
    texts[:, 0] = regions + randn(*regions.shape, seed=seed + 1)
    return texts


@dataclass
class Scenario:
    """counts: rows per rank; rows(): inputs split by rows; shared(): replicated scalars;
    per_rank: each rank's loss is that of its own rows (else: of the joined batch)."""

    counts: tuple[int, int]
    rows: Callable[[], dict[str, torch.Tensor]]
    shared: Callable[[], dict[str, torch.Tensor]]
    make_loss: Callable[[], torch.nn.Module]
    call: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    per_rank: bool = False


def _regional(counts: tuple[int, int], seed: int, across_ranks: bool) -> Scenario:
    total = sum(counts)
    return Scenario(
        counts,
        lambda: {"regions": randn(total, 8, seed=seed), "texts": randn(total, 8, seed=seed + 1)},
        lambda: {"scale": torch.tensor(math.log(20.0), dtype=torch.float64)},
        lambda: RegionalContrastiveLoss(across_ranks=across_ranks),
        lambda loss, x: loss(x["regions"], x["texts"], x["scale"]),
        per_rank=not across_ranks,
    )


def _hard_negative(counts: tuple[int, int], seed: int, across_ranks: bool) -> Scenario:
    return Scenario(
        counts,
        _hard_rows(sum(counts), seed=seed),
        lambda: {"scale": torch.tensor(math.log(10.0), dtype=torch.float64)},
        lambda: HardNegativeLoss(across_ranks=across_ranks),
        lambda loss, x: loss(x["regions"], x["candidates"], x["scale"], x["mask"]),
        per_rank=not across_ranks,
    )


def _hard_rows(total: int, seed: int) -> Callable[[], dict[str, torch.Tensor]]:
    def rows() -> dict[str, torch.Tensor]:
        regions = randn(total, 8, seed=seed)
        candidates = candidates_near(regions, 6, seed + 1)
        return {"regions": regions, "candidates": candidates, "mask": negative_mask(total, 6)}

    return rows


SCENARIOS: dict[str, Scenario] = {
    "global": Scenario(
        (3, 3),
        lambda: {"images": randn(6, 8, seed=1), "long": randn(6, 8, seed=2), "short": randn(6, 8, seed=3)},
        lambda: {"scale": torch.tensor(math.log(1 / 0.07), dtype=torch.float64)},
        GlobalContrastiveLoss,
        lambda loss, x: loss(x["images"], [x["long"], x["short"]], x["scale"]),
    ),
    "sigmoid": Scenario(
        (3, 3),
        lambda: {"images": randn(6, 8, seed=4), "long": randn(6, 8, seed=5), "short": randn(6, 8, seed=6)},
        lambda: {
            "scale": torch.tensor(math.log(10.0), dtype=torch.float64),
            "bias": torch.tensor(-2.0, dtype=torch.float64),
        },
        SigmoidGlobalLoss,
        lambda loss, x: loss(x["images"], [x["long"], x["short"]], x["scale"], x["bias"]),
    ),
    "regional_2_1": _regional((2, 1), seed=10, across_ranks=True),
    "regional_3_0": _regional((3, 0), seed=20, across_ranks=True),
    "hard_negative": _hard_negative((3, 1), seed=30, across_ranks=True),
    "regional_per_rank_3_2": _regional((3, 2), seed=60, across_ranks=False),
    "regional_per_rank_3_0": _regional((3, 0), seed=20, across_ranks=False),
    "hard_negative_per_rank_3_1": _hard_negative((3, 1), seed=35, across_ranks=False),
    "region_to_all": Scenario(
        (2, 3),
        _hard_rows(5, seed=40),
        lambda: {"scale": torch.tensor(math.log(10.0), dtype=torch.float64)},
        RegionToAllTextsLoss,
        lambda loss, x: loss(x["regions"], x["candidates"], x["scale"], x["mask"]),
    ),
    "rank": Scenario(
        (2, 4),
        _hard_rows(6, seed=50),
        lambda: {"scale": torch.tensor(math.log(5.0), dtype=torch.float64)},
        CrossModalRankLoss,
        lambda loss, x: loss(x["regions"], x["candidates"], x["mask"], x["scale"]),
    ),
}


def run_scenario(scenario: Scenario, rank: int | None) -> dict:
    """Run on rank ``rank``'s rows (None: the whole batch); return loss, gradients and state."""
    rows = scenario.rows() if rank is None else rows_of(scenario, rank)
    inputs = {**rows, **scenario.shared()}
    for value in inputs.values():
        if value.is_floating_point():
            value.requires_grad_()
    loss_fn = scenario.make_loss()
    loss = scenario.call(loss_fn, inputs)
    loss.backward()
    grads = {name: value.grad for name, value in inputs.items() if value.is_floating_point()}
    return {"loss": loss.detach(), "grads": grads, "state": {k: v.clone() for k, v in loss_fn.state_dict().items()}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    # Forked from the pytest process: one intra-op thread, so no OpenMP pool inherited
    # from the parent is used (DataLoader workers do the same).
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # talk over loopback, whatever the hostname
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        results = {name: run_scenario(scenario, rank) for name, scenario in SCENARIOS.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    """Run every scenario once in 2 forked gloo processes; return each rank's results."""
    return run_forked_ranks(_worker, tmp_path_factory.mktemp("losses_distributed"), WORLD_SIZE, DEADLINE_SECONDS)


def assert_loss(loss: torch.Tensor, expected: torch.Tensor, scenario: Scenario, msg=None) -> None:
    """Within the rounding bound of the loss's sums, whose terms (logits) reach the scale plus the bias."""
    shared = scenario.shared()
    logits = shared["scale"].exp().item() + abs(shared.get("bias", torch.tensor(0.0)).item())
    assert_close_to_reference(loss, expected, terms=TERMS, scale=max(abs(expected.item()), logits), msg=msg)


def rows_of(scenario: Scenario, rank: int) -> dict[str, torch.Tensor]:
    start = sum(scenario.counts[:rank])
    return {name: value[start : start + scenario.counts[rank]] for name, value in scenario.rows().items()}


@pytest.mark.parametrize("name", [name for name, scenario in SCENARIOS.items() if not scenario.per_rank])
def test_two_ranks_match_joined_batch(rank_results, name):
    scenario = SCENARIOS[name]
    single = run_scenario(scenario, rank=None)
    per_rank = [results[name] for results in rank_results]

    mean_loss = sum(result["loss"] for result in per_rank) / WORLD_SIZE
    assert_loss(mean_loss, single["loss"], scenario)

    row_names = set(scenario.rows())
    for input_name, full_grad in single["grads"].items():
        if input_name in row_names:
            joined = torch.cat([result["grads"][input_name] for result in per_rank]) / WORLD_SIZE
            assert_close_to_reference(joined, full_grad, terms=TERMS, msg=f"{name}: grad of {input_name}")
        else:
            averaged = sum(result["grads"][input_name] for result in per_rank) / WORLD_SIZE
            assert_close_to_reference(averaged, full_grad, terms=TERMS, msg=f"{name}: grad of {input_name}")
    for input_name, grad in single["grads"].items():
        assert torch.count_nonzero(grad) > 0, f"{name}: gradient of {input_name} is zero, nothing to compare"


@pytest.mark.parametrize("name", [name for name, scenario in SCENARIOS.items() if scenario.per_rank])
def test_per_rank_terms_match_each_rank_alone(rank_results, name):
    """Rank r's loss and gradients are those of one process on rank r's rows (no gather, no
    rescaling), and their mean over ranks is not the joined-batch loss."""
    scenario = SCENARIOS[name]
    per_rank = [results[name] for results in rank_results]
    for rank, result in enumerate(per_rank):
        alone = run_scenario(scenario, rank)  # no process group in this process
        assert_loss(result["loss"], alone["loss"], scenario, msg=f"{name}: rank {rank}")
        for input_name, grad in alone["grads"].items():
            assert_close_to_reference(result["grads"][input_name], grad, terms=TERMS,
                                      msg=f"{name}: rank {rank} grad of {input_name}")
    joined = run_scenario(scenario, rank=None)["loss"].item()
    mean_loss = sum(result["loss"].item() for result in per_rank) / WORLD_SIZE
    assert abs(mean_loss - joined) > 1e-2


def test_rank_loss_theta_is_synchronised(rank_results):
    single = run_scenario(SCENARIOS["rank"], rank=None)
    theta = single["state"]["theta"].item()
    assert 0.0 < theta < 10.0
    scores = SCENARIOS["rank"].shared()["scale"].exp().item()  # theta: means of scores up to the scale
    for results in rank_results:  # the same means, reduced over the ranks in another order
        assert_close_to_reference(results["rank"]["state"]["theta"], single["state"]["theta"], terms=TERMS,
                                  scale=max(theta, scores))
    local_thetas = []
    for rank in range(WORLD_SIZE):  # each rank alone would have picked a different threshold
        scenario = SCENARIOS["rank"]
        loss_fn = CrossModalRankLoss()
        scenario.call(loss_fn, {**rows_of(scenario, rank), **scenario.shared()})
        local_thetas.append(loss_fn.theta.item())
    assert all(abs(local - theta) > 1e-3 for local in local_thetas)


def test_regional_rank_without_boxes_still_gets_gradients(rank_results):
    """Rank 1 holds no box in "regional_3_0": its loss is 0 but rank 0's columns came from it."""
    empty_rank = rank_results[1]["regional_3_0"]
    assert empty_rank["loss"].item() == 0.0
    assert empty_rank["grads"]["regions"].shape == (0, 8)
    assert torch.count_nonzero(rank_results[0]["regional_3_0"]["grads"]["regions"]) > 0
