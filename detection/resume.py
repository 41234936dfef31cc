"""Exact resume: a resumed run draws the same random numbers and batches as an uninterrupted one.

mmengine's ``resume`` restores weights, optimizer, schedulers and the iteration count, then
re-seeds (or keeps the fresh seed's) random generators, so augmentations and the RoI samplers
draw differently from the run that was interrupted. :class:`ExactResumeHook` saves, in every
checkpoint, the torch (CPU and CUDA), numpy and python random states of each rank and the
sampler's seed, and puts them back where the uninterrupted run would be: after
``IterBasedTrainLoop`` has advanced its dataloader over the batches already trained (mmengine's
skip, which also replays what the dataloader workers drew) and before the next batch is loaded;
at the start of the next epoch for ``EpochBasedTrainLoop``.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmdet.registry import HOOKS

STATE_KEY = "resume_state"


def random_state() -> dict:
    """This process's torch, CUDA, numpy and python random states as tensors and plain values."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": keys.tolist(), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_random_state(state: dict) -> None:
    """Put back a :func:`random_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], np.array(numpy["keys"], dtype=np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def train_sampler(runner):
    dataloader = runner.train_dataloader
    return getattr(dataloader, "sampler", None) or getattr(dataloader.batch_sampler, "sampler", None)


class _RestoringIterator:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator`` while the loop advances it over the
    ``skip`` batches already trained; before the batch after them it calls ``restore`` and hands the
    loop its own iterator back."""

    def __init__(self, loop, skip: int, restore: Callable[[], None]) -> None:
        self.loop, self.iterator, self.skip, self.restore = loop, loop.dataloader_iterator, skip, restore

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip == 0:
            self.restore()
            self.loop.dataloader_iterator = self.iterator
        self.skip -= 1
        return next(self.iterator)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Save each rank's random states and the sampler seed in ``checkpoint["resume_state"]``;
    on resume, restore them where the interrupted run stood (see the module docstring).

    Validation during training runs on its own random numbers: the training states are put back
    after it, so when and whether it runs does not change training (a resumed run does not repeat
    the validation that followed its checkpoint).
    """

    priority = "LOW"  # after_train_iter / after_train_epoch: before CheckpointHook (VERY_LOW) saves

    def __init__(self) -> None:
        self.states: list[dict] | None = None  # each rank's, after the last finished iteration
        self.iterations = 0
        self.pending: dict | None = None  # loaded from a checkpoint, to restore
        self.before_validation: dict | None = None

    def capture(self, runner, iterations: int) -> None:
        state = random_state()
        self.states = all_gather_object(state) if get_dist_info()[1] > 1 else [state]
        self.iterations = iterations

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.capture(runner, runner.iter + 1)

    def after_train_epoch(self, runner) -> None:
        self.capture(runner, runner.iter)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.states is None:
            return
        sampler = train_sampler(runner)
        checkpoint[STATE_KEY] = {
            "iter": self.iterations,
            "seed": runner.seed,
            "sampler_seed": getattr(sampler, "seed", None),
            "ranks": self.states,
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.pending = checkpoint.get(STATE_KEY)

    def before_train_epoch(self, runner) -> None:
        state, self.pending = self.pending, None
        if state is None or state["iter"] != runner.iter:
            return  # not a resume (load_from), or resumed from a checkpoint without the states
        rank, world_size = get_dist_info()
        if len(state["ranks"]) != world_size:
            print_log(f"the checkpoint holds the random states of {len(state['ranks'])} processes, this run has "
                      f"{world_size}: it resumes with fresh random numbers", logger="current", level="WARNING")
            return
        sampler = train_sampler(runner)
        if state["sampler_seed"] is not None and hasattr(sampler, "seed"):
            sampler.seed = state["sampler_seed"]
        worker_seed = getattr(runner.train_dataloader.worker_init_fn, "keywords", {}).get("seed")
        if runner.train_dataloader.num_workers and worker_seed != state["seed"]:
            print_log(f"the dataloader workers are seeded from {worker_seed}, the interrupted run's from {state['seed']}:"
                      f" augmentations will differ; resume with --cfg-options randomness.seed={state['seed']}",
                      logger="current", level="WARNING")

        def restore() -> None:
            set_random_state(state["ranks"][rank])

        loop = runner.train_loop
        if hasattr(loop, "dataloader_iterator"):
            loop.dataloader_iterator = _RestoringIterator(loop, runner.iter, restore)
            return
        if runner.iter != runner.epoch * len(runner.train_dataloader):
            print_log(f"resuming at iteration {runner.iter}, inside epoch {runner.epoch + 1}: EpochBasedTrainLoop "
                      "repeats that epoch from its start; save checkpoints by epoch for an exact resume",
                      logger="current", level="WARNING")
        restore()

    def before_val(self, runner) -> None:
        self.before_validation = random_state() if self.states is not None else None

    def after_val(self, runner) -> None:
        if self.before_validation is not None:
            set_random_state(self.before_validation)
            self.before_validation = None
