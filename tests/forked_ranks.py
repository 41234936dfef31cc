"""Run a test's ``worker(rank, port, out_dir)`` on forked gloo ranks and read back what each rank saved."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.multiprocessing as mp

from fgclip.launch import free_port


def run_forked_ranks(worker: Callable, out_dir: Path, world_size: int, deadline_seconds: float) -> list[dict]:
    """Start ``world_size`` forked processes running ``worker(rank, port, str(out_dir))``; each saves
    ``out_dir/rank<r>.pt``. Returns those files' contents in rank order; fails the test (killing the
    workers) past the deadline.

    The workers are forked: they inherit the imported modules, which keeps this to a few seconds (a
    spawned worker re-imports torch and transformers, about 10 s each).
    """
    context = mp.start_processes(worker, args=(free_port(), str(out_dir)), nprocs=world_size, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + deadline_seconds
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"workers did not finish within {deadline_seconds:.0f} s")
    return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(world_size)]
