"""FG-CLIP 2 through `train()`: the shipped recipe with a tiny model, batches of one language
whatever the order, every FG-CLIP 2 term logged, a final checkpoint the evaluation loads, and
a run resumed mid-epoch from a checkpoint that ends with the uninterrupted run's losses and
weights."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fgclip import FGCLIP2Model, FGCLIP2Processor
from fgclip.data.shapes import write_shapes_dataset
from fgclip.encoders import load_encoder
from fgclip.testing import tiny_word_tokenizer
from fgclip.training import load_config, train
from fgclip.training.trainer import FGCLIPTrainer, build_dataset, build_model, build_processor, build_step

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "fgclip2" / "stage2_base.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 shapes scenes, every third marked Chinese, and a word-level tokenizer of their vocabulary."""
    root = tmp_path_factory.mktemp("fgclip2_data")
    write_shapes_dataset(root, seed=2, num_train=24, num_test=1, image_size=32)
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    for index, record in enumerate(records):
        record["is_cn"] = index % 3 == 0
    (root / "train.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    words = sorted({word for record in records for word in re.findall(r"\w+", json.dumps(record).lower())})
    tiny_word_tokenizer(words).save_pretrained(root / "tokenizer")
    return root


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    vocab_size = len(json.loads((data / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    return [
        "model.init=config", f"model.config={{preset: tiny, vocab_size: {vocab_size}}}",
        f"model.tokenizer={data / 'tokenizer'}", f"data.train={data / 'train.jsonl'}", f"data.image_root={data}",
        "data.max_num_patches=16", f"training.output_dir={out}", "training.per_device_train_batch_size=2",
        "training.num_train_epochs=2", "training.logging_steps=1", "training.save_steps=5",
        "training.save_total_limit=null", "training.warmup_steps=2", "training.learning_rate=1e-3",
        "training.dataloader_num_workers=0", "training.seed=3", "training.use_cpu=true", "training.bf16=false",
        "training.tf32=false", "training.activation_checkpointing=false", "training.deepspeed=null", *extra]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    return train(load_config(RECIPE, overrides(data, tmp_path_factory.mktemp("fgclip2_run"))))


def test_shipped_recipe_is_fgclip2_from_siglip2():
    config = load_config(RECIPE)
    assert (config.model.family, config.model.init, config.model.path) == \
        ("fgclip2", "siglip2", "google/siglip2-base-patch16-naflex")
    # the official launch: the size rule per batch (auto) and small images squared to 512 first
    assert config.data.group_by_language and config.data.max_num_patches == "auto"
    assert config.data.dataset_options("fgclip2", 8) == {"small_image_size": 512}
    assert config.training["learning_rate"] == 1e-6 and config.training["per_device_train_batch_size"] == 512


def test_batches_are_one_language(data, tmp_path):
    config = load_config(RECIPE, overrides(data, tmp_path))
    model = build_model(config)
    processor = build_processor(config, model)
    from fgclip.data import FineHARDCollator

    trainer = FGCLIPTrainer(model=build_step(config, model), args=config.training_arguments(),
                            train_dataset=build_dataset(config, processor, 3), group_by_language=True,
                            data_collator=FineHARDCollator(processor, "max_length", "max_length"))
    languages = [batch["is_cn"].tolist() for batch in trainer.get_train_dataloader()]
    assert len(languages) == 12 and all(len(set(batch)) == 1 and len(batch) == 2 for batch in languages)
    assert sum(batch[0] for batch in languages) == 4  # 8 Chinese records in batches of 2


def test_run_logs_every_term_and_writes_a_loadable_model(uninterrupted):
    logged = [entry for entry in uninterrupted.log_history if "loss" in entry]
    assert len(logged) == 24
    assert {"loss_global_long", "loss_global_short", "loss_regional", "loss_tic", "loss_region_to_all",
            "loss_hard_negative", "loss_rank", "loss_hard_block"} <= set(logged[-1])
    final = Path(uninterrupted.final_model_dir)
    assert isinstance(FGCLIP2Model.from_pretrained(final), FGCLIP2Model)
    assert FGCLIP2Processor.from_pretrained(final, max_num_patches=None).max_num_patches == 16
    assert FGCLIP2Processor.from_pretrained(final).max_num_patches == "auto"
    assert isinstance(load_encoder(final).model, FGCLIP2Model)
    # the training-only temperatures are saved with the model (as the official training writes them) and reload
    saved = load_file(final / "model.safetensors")
    assert FGCLIP2Model.from_pretrained(final).logit_scale_hardneg.item() == saved["logit_scale_hardneg"].item()


def test_resume_mid_epoch_gives_the_uninterrupted_run(data, uninterrupted, tmp_path):
    source = Path(uninterrupted.output_dir) / "checkpoint-15"  # epoch 2 is steps 13-24
    shutil.copytree(source, tmp_path / "checkpoint-15")
    resumed = train(load_config(RECIPE, overrides(data, tmp_path)), resume=True)
    expected = {entry["step"]: entry for entry in uninterrupted.log_history if "loss" in entry}
    for entry in (entry for entry in resumed.log_history if "loss" in entry and entry["step"] > 15):
        for key in ("loss", "loss_global", "loss_rank", "loss_tic", "grad_norm"):
            assert entry[key] == pytest.approx(expected[entry["step"]][key], abs=1e-6), (entry["step"], key)
    weights, reference = (load_file(Path(run.final_model_dir) / "model.safetensors") for run in (resumed, uninterrupted))
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=0, atol=1e-6, msg=name)


def test_two_gloo_ranks_match_one_process_on_the_joined_batch(data, tmp_path):
    """Runs of one language split across ranks: 2 ranks x 2 give the batches of 1 process x 4.

    TIC is computed on each rank's own region captions (as upstream), so it is weighted 0 here;
    every other term, the rank threshold (synchronised from global sums) and the weights agree.
    """
    steps = ["training.max_steps=3", "training.lr_scheduler_type=constant", "loss.tic_weight=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train_fgclip.py"), str(RECIPE),
               *overrides(data, tmp_path / "ddp", *steps), "training.per_device_train_batch_size=2"]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    single = train(load_config(RECIPE, overrides(data, tmp_path / "single", *steps,
                                                 "training.per_device_train_batch_size=4")))
    expected = {entry["step"]: entry for entry in single.log_history if "loss" in entry}
    state = json.loads((tmp_path / "ddp" / "checkpoint-3" / "trainer_state.json").read_text())
    logged = {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}
    assert sorted(logged) == sorted(expected) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("loss", "loss_global_long", "loss_global_short", "loss_regional", "loss_region_to_all",
                    "loss_hard_negative", "loss_rank", "loss_rank_theta", "grad_norm"):
            assert logged[step][key] == pytest.approx(expected[step][key], rel=1e-4, abs=1e-5), (step, key)
    ddp_weights = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    for name, value in load_file(Path(single.final_model_dir) / "model.safetensors").items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_deepspeed_zero2_bf16_activation_checkpointing_on_two_ranks(data, tmp_path):
    """The shipped recipe's GPU set-up (ZeRO-2, bf16, activation checkpointing) on 2 CPU ranks."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train_fgclip.py"), str(RECIPE), *overrides(data, tmp_path / "ds"),
               "training.max_steps=2", "training.deepspeed=configs/deepspeed/zero2.json", "training.bf16=true",
               "training.activation_checkpointing=true"]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    logged = [entry for entry in json.loads((tmp_path / "ds" / "checkpoint-2" / "trainer_state.json").read_text())
              ["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(math.isfinite(entry[key]) for entry in logged for key in ("loss", "loss_rank", "loss_tic"))
    assert (tmp_path / "ds" / "checkpoint-2" / "global_step2").is_dir()
    assert FGCLIP2Model.from_pretrained(tmp_path / "ds" / "final").logit_scale.shape == (1,)
