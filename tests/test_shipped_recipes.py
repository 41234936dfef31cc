"""Every shipped GPU recipe run as users run it: ``python tools/train_fgclip.py RECIPE overrides``, one
plain process (no launcher), on the CPU, with the recipe's own precision (bf16), DeepSpeed ZeRO-2,
activation checkpointing, losses, optimizer and schedule.

Overridden is only what this machine cannot have: the model size (tiny checkpoints built here: a CLIP
for stage 1, a SigLIP 2 for FG-CLIP 2; every later recipe starts from the final model of the one it
follows, as the shipped paths chain them), the data (shapes scenes; stage 1 as webdataset shards),
2 steps, the output directory, no loader workers, and the GPU-only settings (``training.tf32=false``,
``training.use_cpu=true`` for bf16 on the CPU), which the tool names in one error line when missing.
The tf32 a GPU run gets is checked on the TrainingArguments the tool builds, with transformers'
hardware checks answered as on an Ampere GPU. DeepSpeed compiles its shared-memory op on first use
(about 70 s, cached in TORCH_EXTENSIONS_DIR).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import webdataset as wds
from transformers import CLIPConfig, CLIPModel, Siglip2Config, Siglip2Model

from fgclip import FGCLIP2Model, FGCLIPModel
from fgclip.data.shapes import write_shapes_dataset
from fgclip.errors import run_command
from fgclip.rerank import CrossEncoderReranker
from fgclip.testing import tiny_config, tiny_fgclip2_config, tiny_word_tokenizer
from fgclip.training import load_config
from test_training_config import gpu_host

REPO = Path(__file__).resolve().parents[1]
STEPS = 2
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_SIZE",
                    "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
FGCLIP_GLOBAL = {"loss_global", "loss_global_long", "loss_global_short"}
FGCLIP_STAGE2 = FGCLIP_GLOBAL | {"loss_regional", "loss_hard_negative"}
FGCLIP2_TERMS = {"loss_global", "loss_global_long", "loss_global_short", "loss_regional", "loss_tic",
                 "loss_region_to_all", "loss_hard_negative", "loss_rank", "loss_rank_theta", "loss_hard_block"}
R2D2_TERMS = {"loss_text_queries", "loss_image_queries", "loss_feature_distillation"}


@dataclass(frozen=True)
class Case:
    """A shipped recipe (under configs/), where its weights start (``clip`` / ``siglip2``: the tiny plain
    checkpoint; else the recipe whose final model it continues), its logged loss terms and final class."""

    recipe: str
    start: str
    terms: frozenset
    final: type


CASES = {case.recipe: case for case in (
    Case("fgclip/stage1_vitb16.yaml", "clip", frozenset(FGCLIP_GLOBAL), FGCLIPModel),
    Case("fgclip/stage1_vitl14.yaml", "clip", frozenset(FGCLIP_GLOBAL), FGCLIPModel),
    Case("fgclip/stage2_vitb16.yaml", "fgclip/stage1_vitb16.yaml", frozenset(FGCLIP_STAGE2), FGCLIPModel),
    Case("fgclip/stage2_vitl14.yaml", "fgclip/stage1_vitl14.yaml", frozenset(FGCLIP_STAGE2), FGCLIPModel),
    Case("fgclip2/stage2_base.yaml", "siglip2", frozenset(FGCLIP2_TERMS), FGCLIP2Model),
    Case("r2d2/rerank_fgclip_vitb16.yaml", "fgclip/stage2_vitb16.yaml", frozenset(R2D2_TERMS), CrossEncoderReranker),
    Case("r2d2/rerank_fgclip2_base.yaml", "fgclip2/stage2_base.yaml", frozenset(R2D2_TERMS), CrossEncoderReranker),
)}
GPU_RECIPES = sorted(recipe for recipe in CASES if not recipe.startswith("r2d2/"))


def train_tool():
    """tools/train_fgclip.py as a module."""
    spec = importlib.util.spec_from_file_location("train_fgclip", REPO / "tools" / "train_fgclip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Run:
    output_dir: Path
    process: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """16 shapes scenes (32 px, every other one marked Chinese for FG-CLIP 2's language batches), as a
    JSONL file and as 2 webdataset shards, a word tokenizer of their words, a tiny CLIP and a tiny SigLIP 2."""
    root = tmp_path_factory.mktemp("shipped_recipes")
    data = root / "data"
    write_shapes_dataset(data, seed=2, num_train=16, num_test=1, image_size=32)
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    for index, record in enumerate(records):
        record["is_cn"] = index % 2 == 1
    (data / "train.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    for shard in range(2):
        with wds.TarWriter(str(root / f"finehard-{shard:06d}.tar")) as sink:
            for key, record in enumerate(records[8 * shard: 8 * shard + 8], start=8 * shard):
                sink.write({"__key__": f"{key:09d}", "png": (data / record["f_path"]).read_bytes(),
                            "json": json.dumps(record).encode()})
    torch.manual_seed(0)
    fgclip = tiny_config()
    CLIPModel(CLIPConfig(text_config=fgclip.text_config.to_dict(), vision_config=fgclip.vision_config.to_dict(),
                         projection_dim=fgclip.projection_dim)).save_pretrained(root / "clip")
    words = sorted({word for record in records for word in re.findall(r"\w+", json.dumps(record).lower())})
    tokenizer = tiny_word_tokenizer(words)
    fgclip2 = tiny_fgclip2_config(vocab_size=len(tokenizer))
    Siglip2Model(Siglip2Config(
        text_config={key: value for key, value in fgclip2.text_config.to_dict().items()
                     if key not in ("keep_len", "longtext_len", "model_type")},
        vision_config={key: value for key, value in fgclip2.vision_config.to_dict().items() if key != "model_type"},
    )).save_pretrained(root / "siglip2")
    tokenizer.save_pretrained(root / "siglip2")
    return root


def overrides(case: Case, inputs: Path, output_dir: Path, start: Path) -> list[str]:
    """What cannot be had here; everything else comes from the recipe."""
    config = load_config(REPO / "configs" / case.recipe)
    data = inputs / "data"
    train = [f"data.train={inputs / 'finehard-{000000..000001}.tar'}"] if config.data.shards else \
        [f"data.train={data / 'train.jsonl'}", f"data.image_root={data}"]
    reranker = [f"model.reranker.{key}={value}" for key, value in
                (("hidden_size", 32), ("num_hidden_layers", 1), ("num_attention_heads", 2), ("intermediate_size", 64))
                if config.model.reranker]
    gpu_only = ["training.use_cpu=true"] + (["training.tf32=false"] if config.training.get("tf32") else [])
    return [f"model.path={start}", *reranker, *train, f"training.output_dir={output_dir}",
            f"training.max_steps={STEPS}", "training.dataloader_num_workers=0", *gpu_only,
            "training.per_device_train_batch_size=4",  # the recipes' 384 / 512 / 32 per device: too heavy here
            "training.logging_steps=1"]  # the recipes log every 10 steps: every term of both steps seen


@pytest.fixture(scope="module")
def runs(inputs):
    """``runs(recipe)``: the recipe's run through the tool, once, after the run it starts from."""
    done: dict[str, Run] = {}
    environment = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
    environment.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

    def run(recipe: str) -> Run:
        if recipe not in done:
            case = CASES[recipe]
            start = inputs / case.start if case.start in ("clip", "siglip2") else run(case.start).output_dir / "final"
            output_dir = inputs / "runs" / Path(recipe).with_suffix("")
            command = [sys.executable, str(REPO / "tools" / "train_fgclip.py"), str(REPO / "configs" / recipe),
                       *overrides(case, inputs, output_dir, start)]
            done[recipe] = Run(output_dir, subprocess.run(command, cwd=REPO, env=environment, capture_output=True,
                                                          text=True, timeout=900))
        return done[recipe]

    return run


def ds_module_and_optimizer(checkpoint: Path) -> tuple[dict, dict]:
    """DeepSpeed's own checkpoint of one rank: the module states and the ZeRO optimizer states."""
    step = checkpoint / f"global_step{STEPS}"
    module = torch.load(step / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    optimizer = torch.load(step / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu",
                           weights_only=False)
    return module, optimizer["optimizer_state_dict"]


@pytest.mark.parametrize("recipe", list(CASES))
def test_shipped_recipe_trains_in_one_cpu_process(recipe, runs):
    case, run = CASES[recipe], runs(recipe)
    assert run.process.returncode == 0, run.process.stderr[-4000:]
    config = load_config(REPO / "configs" / recipe)
    assert config.training["bf16"] is True
    if case.start in ("clip", "siglip2"):
        assert config.model.init == case.start
    else:  # the shipped path is where the recipe it continues writes its final model
        previous = load_config(REPO / "configs" / case.start)
        assert Path(config.model.path) == Path(previous.training["output_dir"]) / "final"
    log = run.process.stderr
    checkpoint = run.output_dir / f"checkpoint-{STEPS}"
    logged = [entry for entry in json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    for entry in logged:
        assert {key for key in entry if key.startswith("loss_")} == case.terms
        assert all(math.isfinite(entry[key]) for key in (*case.terms, "loss", "grad_norm")), entry
    if config.training.get("deepspeed"):
        assert config.training["deepspeed"] == "configs/deepspeed/zero2.json"
        assert "DeepSpeed without a launcher: one process, RANK=0 WORLD_SIZE=1" in log
        checkpointing = "on" if config.training.get("activation_checkpointing") else "off"
        assert f"training precision: DeepSpeed ZeRO-2 bf16, weights bfloat16; activation checkpointing " \
               f"{checkpointing}" in log
        module, optimizer = ds_module_and_optimizer(checkpoint)
        assert module["ds_config"]["bf16"]["enabled"] is True and module["global_steps"] == STEPS
        assert module["ds_config"]["zero_optimization"]["stage"] == 2
        parameters = {name for group in module["param_shapes"] for name in group}  # the weights trained
        assert {module["module"][name].dtype for name in parameters} == {torch.bfloat16}
        assert {group.dtype for group in optimizer["single_partition_of_fp32_groups"]} == {torch.float32}
        states = optimizer["base_optimizer_state"]["state"].values()  # Adam saw bf16 gradients at both steps
        assert all(state["step"].item() == STEPS and state["exp_avg_sq"].abs().sum() > 0 for state in states)
    else:
        assert "training precision: bf16 autocast, weights float32; activation checkpointing off" in log
    final = run.output_dir / "final"
    assert f"final model: {final}" in run.process.stdout
    assert isinstance(case.final.from_pretrained(final), case.final)


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipes_hand_tf32_to_the_trainer(recipe, monkeypatch):
    """On an Ampere GPU (transformers' hardware checks answered so) the tool's TrainingArguments keep tf32,
    bf16, DeepSpeed ZeRO-2 and activation checkpointing."""
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / recipe)
    with gpu_host():
        arguments = config.training_arguments()
    assert arguments.tf32 is True and arguments.bf16 is True and arguments.activation_checkpointing is True
    assert arguments.hf_deepspeed_config.config["zero_optimization"]["stage"] == 2


CPU_FIX = "training.tf32=false training.use_cpu=true"


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a CUDA GPU is told")
@pytest.mark.parametrize("recipe, extra, environment, expected", [
    *[(recipe, [], {}, "training.tf32 needs an Ampere or newer CUDA GPU; training.bf16 needs an Ampere or newer "
                       f"GPU, or training.use_cpu on a CPU (no CUDA GPU here): add {CPU_FIX} to train on the CPU")
      for recipe in GPU_RECIPES],
    *[(recipe, [], {}, "training.bf16 needs an Ampere or newer GPU, or training.use_cpu on a CPU (no CUDA GPU "
                       "here): add training.use_cpu=true to train on the CPU")
      for recipe in CASES if recipe.startswith("r2d2/")],
    ("fgclip/stage2_vitb16.yaml", CPU_FIX.split(), {"LOCAL_RANK": "0"},
     "training.deepspeed: LOCAL_RANK set in the environment but not RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; "
     "start with torchrun (or deepspeed), or unset LOCAL_RANK to train in one process"),
    ("fgclip2/stage2_base.yaml", CPU_FIX.split(), {"OMPI_COMM_WORLD_SIZE": "2"},
     "training.deepspeed: started as 2 MPI processes (OMPI_COMM_WORLD_SIZE) without RANK / LOCAL_RANK / WORLD_SIZE; "
     "start with torchrun or deepspeed"),
])
def test_what_cannot_run_here_is_one_line(recipe, extra, environment, expected, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    argv = [f"configs/{recipe}", f"training.output_dir={tmp_path}", *extra]
    assert run_command(train_tool().main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: configs/{recipe}: {expected}"]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # stopped before anything ran
    assert {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE")} == {"RANK": None, "WORLD_SIZE": None}
