"""Training recipes: `_base_` chains, typed overrides, key checks, and the shipped recipes."""
from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import pytest
import transformers.training_args as training_args_module

from fgclip.errors import ConfigError
from fgclip.training import load_config
from fgclip.training.config import TRAINING_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "fgclip"
SHIPPED = sorted(path for path in RECIPES.glob("*.yaml") if not path.name.startswith("_"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def chain(tmp_path):
    """grandparent <- parent <- child, with overrides at each level."""
    write(tmp_path / "grand.yaml", "data: {train: a.jsonl, max_boxes: 4}\n"
                                   "training: {learning_rate: 1.0e-4, seed: 1, logging_steps: 10}\n")
    write(tmp_path / "extra.yaml", "loss: {regional: true}\ntraining: {seed: 2}\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "parent.yaml", "_base_: [../grand.yaml, ../extra.yaml]\n"
                                            "data: {max_boxes: 2}\ntraining: {seed: 3}\n")
    return write(tmp_path / "sub" / "child.yaml", "_base_: parent.yaml\ntraining: {logging_steps: 5}\n")


def test_base_chain_merges_in_order(chain):
    config = load_config(chain)
    assert config.data.train == "a.jsonl"
    assert config.data.max_boxes == 2  # parent over grandparent
    assert config.loss.regional is True  # second base of the list
    assert config.training == {"learning_rate": 1e-4, "seed": 3, "logging_steps": 5}


def test_overrides_are_typed(chain):
    config = load_config(chain, ["training.learning_rate=1e-4", "training.warmup_steps=7", "training.bf16=true",
                                 "training.data_seed=null", "data.max_boxes=0", "loss.hard_negative_weight=2",
                                 "model.config={preset: tiny, image_size: 48}", "training.lr_scheduler_type=constant"])
    assert type(config.training["learning_rate"]) is float and config.training["learning_rate"] == 1e-4
    assert type(config.training["warmup_steps"]) is int and config.training["warmup_steps"] == 7
    assert config.training["bf16"] is True and config.training["data_seed"] is None
    assert config.data.max_boxes == 0 and config.loss.hard_negative_weight == 2
    assert config.model.config == {"preset": "tiny", "image_size": 48}
    assert config.model.build_config().vision_config.image_size == 48
    assert config.training["lr_scheduler_type"] == "constant"


def test_exponent_without_dot_is_a_float_in_files_too(tmp_path):
    path = write(tmp_path / "r.yaml", "data: {train: x}\ntraining: {learning_rate: 3e-5, weight_decay: 1E+0}\n")
    training = load_config(path).training
    assert training["learning_rate"] == pytest.approx(3e-5) and type(training["learning_rate"]) is float
    assert training["weight_decay"] == 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1", r"unknown section\(s\) \['optim'\]"),
    ("data.max_box=3", r"unknown key\(s\) data\.max_box; data takes: .*max_boxes"),
    ("training.learnig_rate=1e-4", r"unknown key\(s\) training\.learnig_rate"),
    ("training.learning_rate=fast", r"training\.learning_rate: expected float, got 'fast'"),
    ("training.per_device_train_batch_size=2.5", r"training\.per_device_train_batch_size: expected int"),
    ("data.skip_bad_records=yes please", r"data\.skip_bad_records: expected bool"),
    ("loss.regional=1", r"loss\.regional: expected bool, got 1"),
    ("model.init=scratch", r"model\.init: expected one of config, clip, pretrained"),
    ("data.max_boxes=-1", r"data\.max_boxes: expected an integer >= 0"),
    ("training=5", r"training: expected a mapping"),
    ("data.train.x=1", r"data\.train is not a section"),
    ("learning_rate", r"expected section\.key=value"),
])
def test_bad_keys_and_values_are_named(chain, override, message):
    with pytest.raises(ValueError, match=message) as error:
        load_config(chain, [override])
    if "override" not in str(error.value):
        assert str(chain) in str(error.value)


def test_base_cycle_and_missing_base(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ValueError, match="_base_ cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: recipe file not found \(_base_ of .*c\.yaml\)"):
        load_config(tmp_path / "c.yaml")


def test_training_defaults_and_user_values(chain, tmp_path):
    config = load_config(chain, [f"training.output_dir={tmp_path / 'out'}", "training.use_cpu=true",
                                 "training.report_to=[tensorboard]"])
    arguments = config.training_arguments()
    assert arguments.remove_unused_columns is TRAINING_DEFAULTS["remove_unused_columns"] is False
    assert arguments.ddp_find_unused_parameters is False
    assert arguments.report_to == ["tensorboard"]
    assert arguments.learning_rate == 1e-4 and arguments.seed == 3 and arguments.logging_steps == 5


@contextlib.contextmanager
def gpu_host():
    """Within it, what TrainingArguments checks for bf16 / tf32 is answered as on an Ampere GPU."""
    with mock.patch.object(training_args_module, "is_torch_bf16_gpu_available", return_value=True), \
            mock.patch.object(training_args_module, "is_torch_tf32_available", return_value=True), \
            mock.patch.object(training_args_module, "enable_tf32"):
        yield


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda path: path.name)
def test_shipped_recipe_builds_training_arguments(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths are relative to the repository root
    config = load_config(recipe)
    if config.model.init == "config":
        model_config = config.model.build_config()
        assert model_config.vision_config.image_size % model_config.vision_config.patch_size == 0
    else:
        assert config.model.path
    gpu_settings = config.training.get("bf16") or config.training.get("tf32")
    with gpu_host() if gpu_settings else contextlib.nullcontext():
        arguments = config.training_arguments()
    assert arguments.remove_unused_columns is False
    assert arguments.per_device_train_batch_size == config.training["per_device_train_batch_size"]
    assert arguments.learning_rate == config.training["learning_rate"]
    if config.data.shards:
        assert arguments.max_steps > 0, "an iterable (shard) dataset needs max_steps"
    if arguments.deepspeed:
        assert Path(arguments.deepspeed).is_file()
        zero = arguments.hf_deepspeed_config.config["zero_optimization"]
        assert zero["stage"] == 2
        assert arguments.bf16 and arguments.activation_checkpointing


def test_stage2_recipes_start_from_their_stage1_output():
    for size in ("vitb16", "vitl14"):
        stage1 = load_config(RECIPES / f"stage1_{size}.yaml")
        stage2 = load_config(RECIPES / f"stage2_{size}.yaml")
        assert stage2.model.init == "pretrained"
        assert Path(stage2.model.path) == Path(stage1.training["output_dir"]) / "final"
        assert (stage1.loss.regional, stage1.loss.hard_negatives) == (False, False)
        assert (stage2.loss.regional, stage2.loss.hard_negatives) == (True, True)
        assert (stage2.loss.regional_weight, stage2.loss.hard_negative_weight) == (0.1, 0.5)
    shapes1, shapes2 = load_config(RECIPES / "shapes_stage1.yaml"), load_config(RECIPES / "shapes_stage2.yaml")
    assert Path(shapes2.model.path) == Path(shapes1.training["output_dir"]) / "final"
