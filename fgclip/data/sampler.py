"""Batches of one language for FG-CLIP 2, whose batches are all-English or all-Chinese."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class LanguageGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose samples share a language, for one rank of ``world_size``.

    Every step's global batch is a run of ``world_size`` same-language batches, one per rank
    (this rank's is the ``rank``-th of the run), so the sigmoid loss, gathered over ranks,
    never mixes languages. All ranks draw the same runs (same seed). Samples that do not fill
    a whole run of their language are left out of the epoch (a different set each epoch).

    Args:
        languages: one hashable key per sample (e.g. the records' ``is_cn``).
        batch_size: samples per batch (per device).
        world_size / rank: data-parallel ranks and this one.
        seed: with the epoch (:meth:`set_epoch`), seeds the order.
    """

    def __init__(self, languages: Sequence, batch_size: int, world_size: int = 1, seed: int = 0, rank: int = 0):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.rank = rank
        self.groups: dict = {}
        for index, language in enumerate(languages):
            self.groups.setdefault(language, []).append(index)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        run = batch_size * world_size
        if not any(len(indices) >= run for indices in self.groups.values()):
            raise ValueError(f"no language has {run} samples for one step of {world_size} x {batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _runs(self) -> list[list[list[int]]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        run_size = self.batch_size * self.world_size
        runs = []
        for language in sorted(self.groups, key=str):
            order = rng.permutation(self.groups[language])
            for start in range(0, len(order) - run_size + 1, run_size):
                chunk = order[start : start + run_size].tolist()
                runs.append([chunk[b : b + self.batch_size] for b in range(0, run_size, self.batch_size)])
        return [runs[i] for i in rng.permutation(len(runs))]

    def __iter__(self) -> Iterator[list[int]]:
        for run in self._runs():
            yield run[self.rank]

    def __len__(self) -> int:
        run_size = self.batch_size * self.world_size
        return sum(len(indices) // run_size for indices in self.groups.values())
