"""CPU runs keep freed host memory for reuse (`fgclip.host_memory`): a block allocated again after
being freed is served without page faults, and the CPU commands turn this on."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import fgclip.host_memory
import fgclip.training.trainer

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

BLOCK_PAGES = 64 * 2**20 // 4096  # a 64 MiB tensor in 4 KiB pages

# A loop like a training or evaluation loop: a few temporaries of several sizes and a 64 MiB block,
# written and freed at every step. Printed: the last step's page faults, and how much the resident
# set grew over the last 6 steps (KiB).
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from fgclip.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def resident_kib():
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
    inputs, weights = torch.randn(256, 512), torch.randn(4096, 512)
    steps = []
    for step in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        hidden = (inputs @ weights.t()).relu() @ weights
        block = torch.empty(16 * 2**20).fill_(1.0)
        del hidden, block
        steps.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, resident_kib()))
    print(steps[-1][0], steps[-1][1] - steps[5][1])
""")


def last_step(mode: str) -> tuple[int, int]:
    """(page faults of the last step, resident-set growth over the last 6 steps in KiB)."""
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    faults, growth = run.stdout.split()[-2:]
    return int(faults), int(growth)


def transparent_huge_pages_always() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.is_file() and "[always]" in setting.read_text()


def test_a_loop_reuses_freed_blocks_without_page_faults_or_growth():
    faults, growth = last_step("keep")
    assert faults < BLOCK_PAGES / 100
    assert growth == 0  # the heap reached its size and stays there
    if not transparent_huge_pages_always():  # with 2 MiB pages a fresh mapping faults 32 times only
        assert last_step("default")[0] > BLOCK_PAGES / 2  # glibc maps and unmaps the block at every step


def test_eval_on_the_cpu_keeps_freed_memory(monkeypatch, tmp_path):
    from fgclip.cli import main

    calls = []
    monkeypatch.setattr(fgclip.host_memory, "keep_freed_memory", lambda: calls.append(True))
    # The device is resolved (and the allocator set) before the models load; a missing model stops it there.
    assert main(["eval", "--model", f"m={tmp_path / 'missing'}", "--data-root", str(tmp_path),
                 "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]) == 2
    assert calls == [True]


class ModelBuilt(Exception):
    """Stops a training run where it builds its model: the allocator is set before that."""


def allocator_calls_until_the_model_is_built(monkeypatch, tmp_path, *overrides: str) -> list:
    """Start ``train()`` on the shapes recipe; the ``keep_freed_memory`` calls made before the model."""
    from test_training_runs import recipe

    def stop(config):
        raise ModelBuilt

    calls = []
    monkeypatch.setattr(fgclip.training.trainer, "keep_freed_memory", lambda: calls.append(True))
    monkeypatch.setattr(fgclip.training.trainer, "build_model", stop)
    with pytest.raises(ModelBuilt):
        fgclip.training.trainer.train(recipe(tmp_path, "train.jsonl", tmp_path / "run", *overrides))
    return calls


def test_cpu_training_keeps_freed_memory(monkeypatch, tmp_path):
    assert allocator_calls_until_the_model_is_built(monkeypatch, tmp_path) == [True]


def test_training_with_a_gpu_leaves_the_host_allocator_alone(monkeypatch, tmp_path):
    # A GPU host as the trainer sees it (the rest of the stack keeps this machine's answer, no CUDA to start)
    monkeypatch.setattr(fgclip.training.trainer, "torch", SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True)))
    assert allocator_calls_until_the_model_is_built(monkeypatch, tmp_path, "training.use_cpu=false") == []
