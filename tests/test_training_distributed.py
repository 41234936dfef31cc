"""`torchrun --nproc_per_node 2` (gloo, use_cpu) through tools/train_fgclip.py against one
process on the joined batch.

Data order: with ``per_device_train_batch_size=b`` on n ranks, accelerate wraps the
trainer's ``BatchSampler(b)`` over one seeded permutation (``SeedableRandomSampler``, the
same seed on every rank) in a ``BatchSamplerShard``: rank r takes batches r, r + n, ... So
optimizer step k sees ``permutation[k*n*b : (k+1)*n*b]``, rank 0's half first, which is
exactly the batch of one process with ``per_device_train_batch_size=n*b`` (same seed, same
permutation). 24 scenes and n*b = 4 divide evenly, so no rank pads its last batch.

The second run is the GPU recipe's set-up on 2 CPU ranks: DeepSpeed ZeRO-2
(configs/deepspeed/zero2.json), bf16 and activation checkpointing, reading webdataset
shards. Shards split themselves by rank: each rank reads its own through a plain
DataLoader (accelerate's default for iterable datasets, reading on rank 0 and dispatching,
fails on batches whose token widths differ), and skipped bad samples are summed over
ranks. DeepSpeed compiles its shared-memory op on first use (about 70 s, cached in
TORCH_EXTENSIONS_DIR).

The losses all-gather features with gradients and normalise each rank's value so that the
mean over ranks is the joined-batch loss; HF logs that mean, the per-term logs are averaged
over ranks by the trainer, and DDP's gradient average is the joined-batch gradient (seen in
``grad_norm``, logged before clipping, and in the weights after 3 AdamW steps).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file

from fgclip import FGCLIPModel
from fgclip.data.shapes import write_shapes_dataset
from fgclip.training import load_config, train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "fgclip" / "shapes_stage2.yaml"
STEPS = 3


def overrides(data: Path, out: Path, per_device_batch: int) -> list[str]:
    return [
        "model.init=config",
        "model.config={preset: tiny, image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 2}",
        f"data.train={data / 'train.jsonl'}", f"data.image_root={data}", f"training.output_dir={out}",
        f"training.per_device_train_batch_size={per_device_batch}", f"training.max_steps={STEPS}",
        "training.logging_steps=1", "training.save_steps=100", "training.warmup_steps=0",
        "training.lr_scheduler_type=constant", "training.learning_rate=1e-3", "training.dataloader_num_workers=0",
        "training.seed=3", "training.use_cpu=true", "training.bf16=false",
        # 2 ranks equal 1 process on the joined batch only when the region terms span the joined batch
        # (the official default contrasts each rank's own boxes)
        "loss.region_scope=global"]


def per_step(log_history: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in log_history if "loss" in entry}


def test_two_gloo_ranks_match_one_process_on_the_joined_batch(tmp_path):
    data = tmp_path / "data"
    write_shapes_dataset(data, seed=2, num_train=24, num_test=1, image_size=32)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train_fgclip.py"), str(RECIPE), *overrides(data, tmp_path / "ddp", 2)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("final model:") == 1  # printed by rank 0 only

    single = train(load_config(RECIPE, overrides(data, tmp_path / "single", 4)))
    expected = per_step(single.log_history)
    logged = per_step(json.loads((tmp_path / "ddp" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
                      ["log_history"])
    assert sorted(logged) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("loss", "loss_global_long", "loss_global_short", "loss_regional", "loss_hard_negative"):
            assert logged[step][key] == pytest.approx(expected[step][key], abs=1e-5), (step, key)
        assert logged[step]["grad_norm"] == pytest.approx(expected[step]["grad_norm"], rel=1e-5), step

    ddp_weights = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    single_weights = load_file(Path(single.final_model_dir) / "model.safetensors")
    assert ddp_weights.keys() == single_weights.keys()
    for name, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_deepspeed_zero2_bf16_ranks_read_their_own_shards_and_count_skips(tmp_path):
    data = tmp_path / "data"
    write_shapes_dataset(data, seed=4, num_train=8, num_test=1, image_size=32)
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    urls = [str(tmp_path / f"finehard-{index}.tar") for index in range(2)]
    for index, url in enumerate(urls):
        with wds.TarWriter(url) as sink:
            if index == 1:  # a bad sample on one rank only, followed by good ones
                bad = {key: value for key, value in records[0].items() if key != "short_caption"}
                sink.write({"__key__": "000000100", "png": (data / records[0]["f_path"]).read_bytes(),
                            "json": json.dumps(bad).encode()})
            for key, record in enumerate(records[4 * index: 4 * index + 4], start=4 * index):
                sink.write({"__key__": f"{key:09d}", "png": (data / record["f_path"]).read_bytes(),
                            "json": json.dumps(record).encode()})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train_fgclip.py"), str(RECIPE), *overrides(data, tmp_path / "ddp", 2),
               f"data.train={'::'.join(urls)}", "data.shards=true", "data.skip_bad_records=true",
               "training.max_steps=2",  # 2 steps x 2 per rank = the 4 good samples of each shard
               "training.deepspeed=configs/deepspeed/zero2.json", "training.bf16=true",
               "training.activation_checkpointing=true"]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "skipped 1 bad record(s) (short_caption: missing: 1)" in run.stdout
    logged = per_step(json.loads((tmp_path / "ddp" / "checkpoint-2" / "trainer_state.json").read_text())
                      ["log_history"])
    assert sorted(logged) == [1, 2] and logged[2]["skipped_records"] == 1
    assert all(math.isfinite(logged[step][key]) for step in (1, 2) for key in ("loss", "loss_hard_negative"))
    assert (tmp_path / "ddp" / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own checkpoint
    model = FGCLIPModel.from_pretrained(tmp_path / "ddp" / "final")
    assert model.logit_scale.shape == model.logit_scale_hardneg.shape == ()  # held as (1,) while training
