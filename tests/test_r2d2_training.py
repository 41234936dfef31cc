"""The shipped R2D2 recipe (configs/r2d2/shapes_rerank.yaml: pre-ranking on the dual encoder,
target- and feature-guided distillation from the EMA teacher, ALBEF's queues of 32 teacher
embeddings) through ``train()``:

* kill-and-resume: a run SIGKILLed after its step-8 checkpoint and resumed logs the same per-step
  losses as an uninterrupted run and ends with the same re-ranker, and its last checkpoint holds the
  same teacher and queues (submodule and buffers of the training step, saved and restored with it);
* 2 gloo ranks (``torchrun``) against one process on the joined batch: the hard negatives and the
  masked tokens are drawn from the all-rank batch with a generator shared by the ranks, the queues
  take the gathered teacher embeddings, and every term is a per-rank mean whose mean over ranks is
  the joined-batch value, so losses, gradient norms, the re-ranker, the teacher and the queues match.

24 scenes; resume: batch 4, 2 epochs (12 steps), checkpoints every 4, killed in epoch 1.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fgclip import FGCLIPModel
from fgclip.data.shapes import write_shapes_dataset
from fgclip.encoders import load_encoder
from fgclip.rerank.distillation import FeatureQueues
from fgclip.testing import tiny_config
from fgclip.training import load_config, train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "r2d2" / "shapes_rerank.yaml"
TERMS = ("loss", "loss_pre_ranking", "loss_text_queries", "loss_image_queries", "loss_feature_distillation")
DRIVER = """
import os, signal, sys
from transformers import TrainerCallback
from fgclip.training import load_config, train


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 8:
            os.kill(os.getpid(), signal.SIGKILL)


train(load_config(sys.argv[1], sys.argv[2:]), callbacks=[KillAfterSave()])
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("r2d2_training")
    write_shapes_dataset(root / "data", seed=2, num_train=24, num_test=1, image_size=32)
    torch.manual_seed(0)
    FGCLIPModel(tiny_config()).save_pretrained(root / "dual")
    return root


def overrides(root: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return [f"model.path={root / 'dual'}", f"data.train={root / 'data' / 'train.jsonl'}",
            f"data.image_root={root / 'data'}", f"training.output_dir={out}",
            f"training.per_device_train_batch_size={batch}", "training.seed=5", "training.learning_rate=1e-3",
            "training.lr_scheduler_type=constant", *extra]


def per_step(log_history: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in log_history if "loss" in entry}


def teacher_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    weights = load_file(checkpoint / "model.safetensors")
    teacher = {name: value for name, value in weights.items() if name.startswith("teacher.")}
    assert {name.split(".")[1] for name in teacher} == {"reranker", "dual_encoder"}
    return teacher


def queues(checkpoint: Path) -> dict[str, torch.Tensor]:
    weights = load_file(checkpoint / "model.safetensors")
    queued = {name: value for name, value in weights.items() if name.startswith("queues.")}
    assert set(queued) == {"queues.images", "queues.texts", "queues.pointer"}
    return queued


def assert_close_weights(actual: dict, expected: dict, atol: float, rtol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=rtol, atol=atol, msg=name)


def test_killed_run_resumes_with_the_same_losses_reranker_and_teacher(setup, tmp_path):
    schedule = ("training.num_train_epochs=2", "training.max_steps=-1", "training.save_steps=4",
                "training.save_total_limit=null", "training.dataloader_num_workers=1")
    uninterrupted = train(load_config(RECIPE, overrides(setup, tmp_path / "full", 4, *schedule)))
    expected = per_step(uninterrupted.log_history)
    assert sorted(expected) == list(range(1, 13))
    assert all(key in expected[12] for key in TERMS)

    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(RECIPE),
                             *overrides(setup, tmp_path / "resumed", 4, *schedule)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    first_teacher = teacher_weights(tmp_path / "resumed" / "checkpoint-4")
    assert any(not torch.equal(first_teacher[name], value)
               for name, value in teacher_weights(tmp_path / "resumed" / "checkpoint-8").items())  # it moves
    # 32 rows seeded by training.seed, 4 embeddings a step: rows 0-15 written by steps 1-4, 16-31 by 5-8
    first_queues, second_queues = (queues(tmp_path / "resumed" / f"checkpoint-{n}") for n in (4, 8))
    seeded = FeatureQueues(32, first_queues["queues.texts"].shape[1], seed=5)
    assert int(first_queues["queues.pointer"]) == 16 and int(second_queues["queues.pointer"]) == 0
    for name in ("images", "texts"):
        first, second, start = first_queues[f"queues.{name}"], second_queues[f"queues.{name}"], getattr(seeded, name)
        assert torch.equal(first[16:], start[16:]) and not (first[:16] == start[:16]).all(dim=1).any()
        assert torch.equal(second[:16], first[:16]) and not (second[16:] == start[16:]).all(dim=1).any()

    resumed = train(load_config(RECIPE, overrides(setup, tmp_path / "resumed", 4, *schedule)), resume=True)
    logged = per_step(resumed.log_history)
    assert sorted(logged) == list(range(1, 13))
    for step in range(1, 13):
        for key in (*TERMS, "grad_norm"):
            assert logged[step][key] == pytest.approx(expected[step][key], abs=1e-6), (step, key)
    assert_close_weights(load_file(Path(resumed.final_model_dir) / "model.safetensors"),
                         load_file(Path(uninterrupted.final_model_dir) / "model.safetensors"), atol=1e-6)
    assert_close_weights(teacher_weights(tmp_path / "resumed" / "checkpoint-12"),
                         teacher_weights(tmp_path / "full" / "checkpoint-12"), atol=1e-6)
    assert_close_weights(queues(tmp_path / "resumed" / "checkpoint-12"), queues(tmp_path / "full" / "checkpoint-12"),
                         atol=1e-6)
    # pre_ranking trains the dual encoder too: final/ holds it beside the re-ranker, loadable as a model
    dual = Path(resumed.final_model_dir) / "dual_encoder"
    assert_close_weights(load_file(dual / "model.safetensors"),
                         load_file(Path(uninterrupted.final_model_dir) / "dual_encoder" / "model.safetensors"), atol=1e-6)
    assert load_encoder(dual).encode_texts(["a red square"]).shape[0] == 1


def test_two_gloo_ranks_match_one_process_on_the_joined_batch(setup, tmp_path):
    # Adam's epsilon at 1e-6 (FG-CLIP's, not R2D2's 1e-8): with 1e-8 a gradient entry of ~1e-9 moves its weight
    # by about the learning rate in a sign set by summation-order rounding, which differs between the runs
    steps = ("training.max_steps=3", "training.save_steps=3", "training.dataloader_num_workers=0",
             "training.adam_epsilon=1e-6")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train_fgclip.py"), str(RECIPE), *overrides(setup, tmp_path / "ddp", 2, *steps)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    single = train(load_config(RECIPE, overrides(setup, tmp_path / "single", 4, *steps)))
    expected = per_step(single.log_history)
    logged = per_step(json.loads((tmp_path / "ddp" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"])
    assert sorted(logged) == sorted(expected) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in TERMS:
            assert logged[step][key] == pytest.approx(expected[step][key], abs=1e-5), (step, key)
        assert logged[step]["grad_norm"] == pytest.approx(expected[step]["grad_norm"], rel=1e-4), step
    assert_close_weights(load_file(tmp_path / "ddp" / "final" / "model.safetensors"),
                         load_file(Path(single.final_model_dir) / "model.safetensors"), atol=1e-5, rtol=1e-4)
    assert_close_weights(teacher_weights(tmp_path / "ddp" / "checkpoint-3"),
                         teacher_weights(tmp_path / "single" / "checkpoint-3"), atol=1e-5, rtol=1e-4)
    assert_close_weights(queues(tmp_path / "ddp" / "checkpoint-3"), queues(tmp_path / "single" / "checkpoint-3"),
                         atol=1e-5, rtol=1e-4)
