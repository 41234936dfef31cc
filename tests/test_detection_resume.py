"""Exact detection resume: ``tools/train_det.py configs/fvit_tiny_cpu.py`` SIGKILLed after its
iteration-10 checkpoint and resumed with ``--resume`` logs the same losses at every iteration after
the checkpoint and ends with the same weights as an uninterrupted run.

20 iterations of batch 2 over the 14 scenes with a base-class box, 7 batches an epoch: the resumed
run re-enters epoch 1 (of the sampler's shuffles) after its third batch and starts epoch 2 at
iteration 15; augmentation (random resize, crop, flip) and the RPN / RoI samplers draw from the
restored random states. Validation at iteration 10 runs in the uninterrupted and killed runs
only, and must not change what follows. A control resumes without the saved states and differs.
In-process runs resume from a copied checkpoint: EpochBasedTrainLoop at an epoch start, and a
dataloader worker inside an epoch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "fvit_tiny_cpu.py"
OPTIONS = ["randomness.seed=0", "default_hooks.checkpoint.interval=10", "train_cfg.val_interval=10",
           "default_hooks.logger.interval=1", "log_processor.window_size=1"]
TIMED = ("time", "data_time")


def train(cwd: Path, work_dir: Path, *extra: str) -> subprocess.Popen:
    """``tools/train_det.py`` on the tiny config in ``cwd``, its output in ``work_dir``.out."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "tools" / "train_det.py"), str(TINY_CONFIG), "--work-dir", str(work_dir),
               *extra, "--cfg-options", *OPTIONS]
    with open(f"{work_dir}.out", "a", encoding="utf-8") as output:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)


def kill_after_checkpoint(process: subprocess.Popen, work_dir: Path, name: str) -> None:
    """SIGKILL ``process`` as soon as ``work_dir/last_checkpoint`` (written after the checkpoint file)
    names ``name``."""
    marker = work_dir / "last_checkpoint"
    while process.poll() is None:
        if marker.is_file() and marker.read_text().strip().endswith(name):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=300)


def finished(process: subprocess.Popen, work_dir: Path) -> str:
    """The output of ``process``, a :func:`train` that must succeed."""
    process.wait(timeout=300)
    output = Path(f"{work_dir}.out").read_text(encoding="utf-8")
    assert process.returncode == 0, output[-3000:]
    return output


def logged(run_dir: Path) -> dict[int, dict]:
    """The scalars logged at each training iteration of one run (one timestamped folder)."""
    records = [json.loads(line) for line in (run_dir / "vis_data" / "scalars.json").read_text().splitlines()]
    return {record["iter"]: {k: v for k, v in record.items() if k not in TIMED} for record in records if "loss" in record}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def runs(workspace):
    """The uninterrupted run's and the killed-then-resumed run's work_dirs, and the resumed run's output."""
    uninterrupted_dir, killed_dir = workspace / "work_dirs" / "uninterrupted", workspace / "work_dirs" / "killed"
    uninterrupted = train(workspace, uninterrupted_dir)  # the two runs side by side
    killed = train(workspace, killed_dir)
    kill_after_checkpoint(killed, killed_dir, "iter_10.pth")
    assert killed.returncode == -signal.SIGKILL, Path(f"{killed_dir}.out").read_text()[-3000:]
    assert not (killed_dir / "iter_20.pth").exists()
    resumed = train(workspace, killed_dir, "--resume")
    finished(uninterrupted, uninterrupted_dir)
    return uninterrupted_dir, killed_dir, finished(resumed, killed_dir)


def test_killed_run_resumes_with_the_same_losses_and_weights(runs):
    uninterrupted, killed, output = runs
    assert "Auto resumed from the latest checkpoint" in output and "iter_10.pth" in output
    expected = logged(next(path for path in uninterrupted.iterdir() if path.is_dir()))
    first, resumed = (logged(path) for path in sorted(path for path in killed.iterdir() if path.is_dir()))
    assert sorted(expected) == list(range(1, 21))
    assert sorted(resumed) == list(range(11, 21))
    assert min(first) == 1 and max(first) >= 10  # the killed run got past its checkpoint
    for step in range(11, 21):
        assert resumed[step].keys() >= {"loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "grad_norm"}
        assert resumed[step] == expected[step], step

    assert_same_weights(weights(killed / "iter_20.pth"), weights(uninterrupted / "iter_20.pth"))


def test_without_the_saved_random_states_the_resume_differs(runs, workspace):
    """The control: the same resume from a checkpoint stripped of ``resume_state`` draws differently."""
    uninterrupted, killed, _ = runs
    work_dir = workspace / "work_dirs" / "stripped"
    work_dir.mkdir()
    checkpoint = torch.load(killed / "iter_10.pth", map_location="cpu", weights_only=True)
    del checkpoint["resume_state"]
    torch.save(checkpoint, work_dir / "iter_10.pth")
    finished(train(workspace, work_dir, "--resume", str(work_dir / "iter_10.pth")), work_dir)
    expected = logged(next(path for path in uninterrupted.iterdir() if path.is_dir()))
    resumed = logged(next(path for path in work_dir.iterdir() if path.is_dir()))
    assert sorted(resumed) == list(range(11, 21))
    assert any(resumed[step]["loss"] != expected[step]["loss"] for step in range(11, 21))


def run_in_process(work_dir: str, options: dict, train_cfg: dict | None = None, resume: str | None = None,
                   ) -> dict[str, torch.Tensor]:
    """Train the tiny config with ``options`` through mmengine's Runner in this process (resuming from
    ``resume``); the final checkpoint's weights."""
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger
    from mmengine.runner import Runner

    from detection.config_file import load_config

    cfg = load_config(str(TINY_CONFIG), {"randomness.seed": 0, **options})
    if train_cfg:
        cfg.train_cfg = ConfigDict(train_cfg)
    cfg.work_dir, cfg.resume, cfg.load_from = work_dir, resume is not None, resume
    MMLogger._instance_dict.clear()  # runners started within one second would share a logger
    runner = Runner.from_cfg(cfg)
    runner.train()
    name = f"epoch_{runner.epoch}.pth" if train_cfg else f"iter_{runner.iter}.pth"
    return weights(Path(work_dir) / name)


def resumed_copy(checkpoint: str, work_dir: str, iterations: int) -> str:
    """``checkpoint`` copied into a fresh ``work_dir``, after checking it holds the states of ``iterations``."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert content["resume_state"]["iter"] == content["meta"]["iter"] == iterations
    Path(work_dir).mkdir()
    torch.save(content, f"{work_dir}/{Path(checkpoint).name}")
    return f"{work_dir}/{Path(checkpoint).name}"


def assert_same_weights(final: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert final.keys() == reference.keys()
    for name in reference:
        assert torch.equal(final[name], reference[name]), name


def test_epoch_based_resume_restores_the_states_at_the_epoch_start(in_workspace):
    """EpochBasedTrainLoop (the shipped configs' loop), validating after every epoch: resuming from
    the epoch-1 checkpoint ends epoch 2 with the uninterrupted run's weights."""
    options = {"default_hooks.checkpoint.by_epoch": True, "default_hooks.checkpoint.interval": 1,
               "log_processor.by_epoch": True}
    loop = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=1)
    reference = run_in_process("work_dirs/epochs", options, loop)
    resume = resumed_copy("work_dirs/epochs/epoch_1.pth", "work_dirs/epochs_resumed", 7)
    assert_same_weights(run_in_process("work_dirs/epochs_resumed", options, loop, resume), reference)


def test_resume_with_a_dataloader_worker_replays_its_augmentations(in_workspace):
    """One dataloader worker (augmenting in its own process, seeded from the run's seed): resuming
    from the iteration-6 checkpoint, inside epoch 0, ends at iteration 12 with the uninterrupted
    run's weights."""
    options = {"train_dataloader.num_workers": 1, "train_cfg.max_iters": 12, "train_cfg.val_interval": 12,
               "default_hooks.checkpoint.interval": 6}
    reference = run_in_process("work_dirs/worker", options)
    resume = resumed_copy("work_dirs/worker/iter_6.pth", "work_dirs/worker_resumed", 6)
    assert_same_weights(run_in_process("work_dirs/worker_resumed", options, resume=resume), reference)
