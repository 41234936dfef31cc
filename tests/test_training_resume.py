"""Resume equality: a run SIGKILLed after a checkpoint and resumed with ``train(config,
resume=True)`` logs the same per-step losses and ends with the same weights as an
uninterrupted run; a checkpoint without its COMPLETE marker (a kill mid-save) is skipped.

24 scenes, batch 4, 2 epochs: 12 steps, checkpoints every 4. The kill comes after the
step-8 checkpoint, in the middle of epoch 1, so the resumed run must restore the sampler's
order for that epoch, skip its first 2 batches, and draw the epoch-1 region captions.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from fgclip.data.shapes import write_shapes_dataset
from fgclip.training import last_complete_checkpoint, load_config, train
from fgclip.training.trainer import COMPLETE_MARKER
from forked_ranks import run_forked_ranks
from tiny_detection import load_tool

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "fgclip" / "shapes_stage2.yaml"
KILL_STEP = 8
DRIVER = """
import os, signal, sys
from transformers import TrainerCallback
from fgclip.training import load_config, train


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == {kill_step}:
            os.kill(os.getpid(), signal.SIGKILL)


train(load_config(sys.argv[1], sys.argv[2:]), callbacks=[KillAfterSave()])
"""


def overrides(data: Path, out: Path) -> list[str]:
    return [
        "model.init=config",
        "model.config={preset: tiny, image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 2}",
        f"data.train={data / 'train.jsonl'}", f"data.image_root={data}", f"training.output_dir={out}",
        "training.per_device_train_batch_size=4", "training.num_train_epochs=2", "training.max_steps=-1",
        "training.logging_steps=1", "training.save_steps=4", "training.save_total_limit=2",
        "training.warmup_steps=3", "training.learning_rate=1e-3", "training.lr_scheduler_type=cosine",
        "training.dataloader_num_workers=1", "training.seed=7", "training.use_cpu=true", "training.bf16=false"]


def per_step(log_history: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in log_history if "loss" in entry}


def assert_same_steps(actual: dict[int, dict], expected: dict[int, dict], steps: range) -> None:
    for step in steps:
        keys = {key for key in expected[step] if key.startswith("loss") or key in ("grad_norm", "learning_rate")}
        assert keys >= {"loss", "loss_global", "loss_regional", "loss_hard_negative", "grad_norm"}
        assert set(actual[step]) >= keys
        for key in keys:
            assert actual[step][key] == pytest.approx(expected[step][key], abs=1e-6), (step, key)


def assert_same_weights(directory_a: str, directory_b: str) -> None:
    weights_a = load_file(Path(directory_a) / "model.safetensors")
    weights_b = load_file(Path(directory_b) / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run, and the output directory of the killed one (kept untouched)."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    write_shapes_dataset(data, seed=1, num_train=24, num_test=1, image_size=32)
    uninterrupted = train(load_config(RECIPE, overrides(data, root / "uninterrupted")))

    (root / "driver.py").write_text(DRIVER.format(kill_step=KILL_STEP))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, str(root / "driver.py"), str(RECIPE), *overrides(data, root / "killed")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return data, uninterrupted, root / "killed"


def test_killed_run_resumes_with_the_same_losses_and_weights(runs, tmp_path):
    data, uninterrupted, killed = runs
    expected = per_step(uninterrupted.log_history)
    assert sorted(expected) == list(range(1, 13))
    assert sorted(path.name for path in killed.iterdir()) == ["checkpoint-4", "checkpoint-8", "recipe.json"]
    assert all((killed / name / COMPLETE_MARKER).is_file() for name in ("checkpoint-4", "checkpoint-8"))

    output = tmp_path / "killed"
    shutil.copytree(killed, output)
    resumed = train(load_config(RECIPE, overrides(data, output)), resume=True)
    logged = per_step(resumed.log_history)
    assert sorted(logged) == list(range(1, 13))
    assert_same_steps(logged, expected, range(1, 13))  # 1-8 from the killed process, 9-12 resumed
    assert_same_weights(resumed.final_model_dir, uninterrupted.final_model_dir)
    # save_total_limit=2 counts complete checkpoints only
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]


def test_checkpoint_without_marker_is_ignored_and_resume_starts_before_it(runs, tmp_path):
    data, uninterrupted, killed = runs
    output = tmp_path / "killed_mid_save"
    shutil.copytree(killed, output)
    partial = output / "checkpoint-8"
    (partial / COMPLETE_MARKER).unlink()  # as if killed while writing the model file
    weights = partial / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    assert get_last_checkpoint(str(output)) == str(partial)  # transformers' own choice
    assert last_complete_checkpoint(output) == str(output / "checkpoint-4")
    resumed = train(load_config(RECIPE, overrides(data, output)), resume=True)
    logged = per_step(resumed.log_history)
    assert sorted(logged) == list(range(1, 13))
    assert_same_steps(logged, per_step(uninterrupted.log_history), range(5, 13))
    assert_same_weights(resumed.final_model_dir, uninterrupted.final_model_dir)
    assert (partial / COMPLETE_MARKER).is_file()
    state = json.loads((partial / "trainer_state.json").read_text())
    assert state["global_step"] == 8


def test_last_complete_checkpoint_orders_by_step(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, complete in ((9, True), (10, True), (100, False), (11, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(f"{step}\n")
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_ctrl_c_prints_the_last_complete_checkpoint_and_the_resume_command(runs, tmp_path):
    """SIGINT during training: no traceback, one line naming the newest complete checkpoint and the command
    that resumes from it, exit status 130."""
    data, _, _ = runs
    out = tmp_path / "interrupted"
    argv = [str(RECIPE), *overrides(data, out), "training.num_train_epochs=50", "training.save_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # Its own process group, signalled as a whole: a terminal's Ctrl-C reaches the DataLoader worker too.
    process = subprocess.Popen([sys.executable, str(REPO / "tools" / "train_fgclip.py"), *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / COMPLETE_MARKER).is_file():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint-2 before the deadline"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    newest = max((path for path in out.glob("checkpoint-*") if (path / COMPLETE_MARKER).is_file()),
                 key=lambda path: int(path.name.split("-")[1]))
    assert stderr.splitlines()[-1] == (f"interrupted: last complete checkpoint {newest}; resume with: "
                                       f"{shlex.join(['python', 'tools/train_fgclip.py', *argv, '--resume'])}")
    assert '"training": {' not in stdout  # the resolved recipe is printed only with --verbose
    assert json.loads((out / "recipe.json").read_text())["training"]["save_steps"] == 2


FINALIZER_DRIVER = """
import os, runpy, signal, sys
from fgclip.training.trainer import FGCLIPTrainer


class SignalledWhileCollected:
    def __del__(self):  # Python drops an exception raised in here ("Exception ignored in ...")
        os.kill(os.getpid(), signal.SIGINT)


save = FGCLIPTrainer._save_checkpoint


def save_then_ctrl_c_in_a_finalizer(self, model, trial):
    save(self, model, trial)
    if self.state.global_step == {signal_step}:
        SignalledWhileCollected()


FGCLIPTrainer._save_checkpoint = save_then_ctrl_c_in_a_finalizer
sys.argv = ["tools/train_fgclip.py", *sys.argv[1:]]
runpy.run_path("tools/train_fgclip.py", run_name="__main__")
"""


def test_ctrl_c_landing_in_a_finalizer_still_stops_before_the_next_step(runs, tmp_path):
    """Ctrl-C delivered while an object's ``__del__`` runs (as a DataLoader iterator's or a tqdm bar's at an
    epoch's end): Python's own KeyboardInterrupt would be dropped there and training would go on to the end.
    It stops before step 5 instead, with the step-4 checkpoint complete and status 130."""
    data, _, _ = runs
    out = tmp_path / "finalizer"
    (tmp_path / "driver.py").write_text(FINALIZER_DRIVER.format(signal_step=4))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(RECIPE), *overrides(data, out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 130, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"interrupted: last complete checkpoint {out / 'checkpoint-4'};")
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-4"]


def stop_flag_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank 0 got Ctrl-C, rank 1 did not: both must stop when the next step begins."""
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    stop = load_tool("train_fgclip").StopBetweenSteps(announce=False)
    stop.requested = rank == 0
    try:
        stop.on_step_begin(SimpleNamespace(device=torch.device("cpu")), TrainerState(), TrainerControl())
        stopped = False
    except KeyboardInterrupt:
        stopped = True
    dist.destroy_process_group()
    torch.save({"stopped": stopped}, Path(out_dir) / f"rank{rank}.pt")


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    assert [result["stopped"] for result in run_forked_ranks(stop_flag_worker, tmp_path, 2, 120)] == [True, True]


FULL_DISK_DRIVER = """
import resource, runpy, sys
from fgclip.training.trainer import FGCLIPTrainer

save = FGCLIPTrainer._save_checkpoint


def save_onto_a_full_disk(self, model, trial):
    if self.state.global_step == {fail_step}:  # from here on no file may grow past 4 KiB, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    save(self, model, trial)


FGCLIPTrainer._save_checkpoint = save_onto_a_full_disk
sys.argv = ["tools/train_fgclip.py", *sys.argv[1:]]
runpy.run_path("tools/train_fgclip.py", run_name="__main__")
"""


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_complete_checkpoint(runs, tmp_path):
    """The step-8 checkpoint cannot be written: one error line naming it and the kept step-4 checkpoint, exit
    status 2, nothing left of checkpoint-8; --resume from step 4 then ends as the uninterrupted run."""
    data, uninterrupted, _ = runs
    out = tmp_path / "full_disk"
    (tmp_path / "driver.py").write_text(FULL_DISK_DRIVER.format(fail_step=KILL_STEP))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    failed = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(RECIPE), *overrides(data, out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1] == (
        f"error: {out}/checkpoint-8: could not be written (File too large (os error 27)); the last complete "
        f"checkpoint {out}/checkpoint-4 is kept (free space, then rerun with --resume)")
    assert sorted(path.name for path in out.iterdir()) == ["checkpoint-4", "recipe.json"]
    assert (out / "checkpoint-4" / COMPLETE_MARKER).is_file()

    resumed = train(load_config(RECIPE, overrides(data, out)), resume=True)
    assert_same_steps(per_step(resumed.log_history), per_step(uninterrupted.log_history), range(5, 13))
    assert_same_weights(resumed.final_model_dir, uninterrupted.final_model_dir)
