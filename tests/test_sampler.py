"""LanguageGroupedBatchSampler: one language per batch and per run of world-size batches, no
sample twice, the expected count, a seeded order that changes with the epoch."""
import pytest

from fgclip.data import LanguageGroupedBatchSampler


@pytest.mark.parametrize("batch_size, world_size", [(3, 1), (2, 2), (4, 3)])
def test_batches_and_runs_are_one_language(batch_size, world_size):
    languages = [index % 3 == 0 for index in range(61)]  # 21 Chinese, 40 English
    per_rank = [list(LanguageGroupedBatchSampler(languages, batch_size, world_size, seed=5, rank=rank))
                for rank in range(world_size)]
    run = batch_size * world_size
    assert all(len(batches) == 21 // run + 40 // run for batches in per_rank)
    assert all(len(batch) == batch_size for batches in per_rank for batch in batches)
    for step in zip(*per_rank):  # one step: every rank's batch
        assert len({languages[index] for batch in step for index in batch}) == 1
    flat = [index for batches in per_rank for batch in batches for index in batch]
    assert len(flat) == len(set(flat))


def test_order_is_seeded_per_epoch():
    languages = [index < 20 for index in range(50)]
    first, again = LanguageGroupedBatchSampler(languages, 5, seed=1), LanguageGroupedBatchSampler(languages, 5, seed=1)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    assert sorted(i for b in first for i in b) == sorted(i for b in again for i in b) == list(range(50))


def test_too_few_samples_for_one_step():
    with pytest.raises(ValueError, match="no language has 8 samples for one step of 2 x 4"):
        LanguageGroupedBatchSampler([True] * 5 + [False] * 7, batch_size=4, world_size=2)
