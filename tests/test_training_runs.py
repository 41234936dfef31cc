"""Short `train()` runs of a tiny model on shapes scenes: malformed records (skipped and
counted, or a clear error), shards read through the trainer, batches with 0 / 1 boxes,
bf16 autocast on the CPU with float32 losses, and the weight-decay split."""
from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from transformers import TrainerCallback, TrainingArguments

from fgclip import FGCLIPModel
from fgclip.data import RecordError, write_finehard_shards
from fgclip.data.shapes import write_shapes_dataset
from fgclip.losses import FGCLIPLoss
from fgclip.testing import tiny_config
from fgclip.training import FGCLIPForTraining, FGCLIPTrainer, load_config, train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "fgclip" / "shapes_stage2.yaml"
TINY = "{preset: tiny, image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 2}"


def overrides(data: Path, train_file: str, out: Path, *extra: str) -> list[str]:
    """For shapes_stage2.yaml: a tiny random model and a short schedule."""
    return [
        "model.init=config", f"model.config={TINY}", f"data.train={data / train_file}", f"data.image_root={data}",
        f"training.output_dir={out}", "training.per_device_train_batch_size=2", "training.max_steps=2",
        "training.logging_steps=1", "training.save_steps=100", "training.warmup_steps=0",
        "training.learning_rate=1e-3", "training.dataloader_num_workers=0", "training.seed=0",
        "training.use_cpu=true", "training.bf16=false", *extra]


def recipe(*args: str | Path):
    return load_config(RECIPE, overrides(*args))


def losses(log_history):
    return [entry for entry in log_history if "loss" in entry]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, seed=5, num_train=8, num_test=1, image_size=32)
    return root


BAD_LINES = {  # line number -> (replacement of the record, reason, field in the message)
    3: (lambda r: {**r, "bbox_info": [{**r["bbox_info"][0], "bbox": [0.1, 0.2, 1.5, 0.9]}]},
        "bbox_info[].bbox: out of range", "bbox_info[0].bbox"),
    6: (lambda r: {k: v for k, v in r.items() if k != "caption"}, "caption: missing", "caption"),
    9: (lambda r: '{"f_path": "images/x.png", "caption": ', "invalid JSON", ""),
}


@pytest.fixture(scope="module")
def bad_jsonl(shapes):
    records = [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()]
    lines, good = [], iter(records)
    for number in range(1, len(records) + len(BAD_LINES) + 1):
        if number in BAD_LINES:
            bad = BAD_LINES[number][0](records[0])
            lines.append(bad if isinstance(bad, str) else json.dumps(bad))
        else:
            lines.append(json.dumps(next(good)))
    path = shapes / "train_bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_record_without_skipping_names_file_line_and_field(shapes, bad_jsonl, tmp_path):
    with pytest.raises(RecordError) as error:
        train(recipe(shapes, bad_jsonl.name, tmp_path / "run"))
    assert str(error.value).startswith(f"{bad_jsonl} line 3: bbox_info[0].bbox: expected 4 or 5 numbers in [0, 1]")
    assert (error.value.location, error.value.field) == (f"{bad_jsonl} line 3", "bbox_info[0].bbox")


def test_skip_bad_records_counts_them_in_logs_and_summary(shapes, bad_jsonl, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_fgclip", REPO / "tools" / "train_fgclip.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "run"
    argv = [str(RECIPE), *overrides(shapes, bad_jsonl.name, out, "data.skip_bad_records=true")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    expected = Counter(reason for _, reason, _ in BAD_LINES.values())
    assert f"skipped {len(BAD_LINES)} bad record(s)" in printed
    assert all(f"{reason}: 1" in printed for reason in expected)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert [entry["skipped_records"] for entry in losses(state["log_history"])] == [3, 3]
    assert (out / "final" / "model.safetensors").is_file()


def write_bad_shard(shapes: Path, pattern: str) -> list[str]:
    """Two shards of the good records, plus a third: a bad sample, then a good one."""
    shards = write_finehard_shards(shapes / "train.jsonl", shapes, pattern, max_samples_per_shard=4)
    record = json.loads((shapes / "train.jsonl").read_text().splitlines()[0])
    image = (shapes / record["f_path"]).read_bytes()
    third = Path(shards[0]).with_name("extra-000000.tar")
    with wds.TarWriter(str(third)) as sink:
        bad = {k: v for k, v in record.items() if k != "short_caption"}
        sink.write({"__key__": "000000100", "png": image, "json": json.dumps(bad).encode()})
        sink.write({"__key__": "000000101", "png": image, "json": json.dumps(record).encode()})
    return shards + [str(third)]


def test_shards_train_and_count_bad_samples_streamed(shapes, tmp_path):
    urls = write_bad_shard(shapes, str(tmp_path / "shards" / "finehard-%06d.tar"))
    config = recipe(shapes, "unused", tmp_path / "run", f"data.train={'::'.join(urls)}", "data.shards=true",
                    "data.skip_bad_records=true", "training.per_device_train_batch_size=3", "training.max_steps=3")
    result = train(config)  # 3 steps x 3 = the 9 good samples
    assert result.skipped_records == {"short_caption: missing": 1}
    assert "short_caption: missing: 1" in result.skipped_summary
    assert len(losses(result.log_history)) == 3
    assert losses(result.log_history)[-1]["skipped_records"] == 1


def test_batches_with_0_and_1_boxes_train(shapes, tmp_path):
    records = [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()[:4]]
    records[0]["bbox_info"] = records[1]["bbox_info"] = []
    records[2]["bbox_info"] = records[2]["bbox_info"][:1]
    records[3]["bbox_info"] = [{**{k: v for k, v in records[3]["bbox_info"][0].items() if k != "short_expr_negs"},
                                "flag_short_neg": 0}]
    (shapes / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ended = []

    class TextTowerCalls(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            ended.append(model.text_tower_calls)

    result = train(recipe(shapes, "few.jsonl", tmp_path / "run", "training.per_device_train_batch_size=1",
                          "training.max_steps=4"), callbacks=[TextTowerCalls()])
    assert ended == [2 * 4]
    steps = losses(result.log_history)
    assert len(steps) == 4 and all(math.isfinite(entry["loss"]) for entry in steps)
    assert all(entry["loss_regional"] == 0.0 for entry in steps)  # 0 or 1 region per batch
    assert sum(entry["loss_hard_negative"] > 0 for entry in steps) == 1  # one record has negatives
    model = FGCLIPModel.from_pretrained(result.final_model_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_step_keeps_losses_float32(shapes, tmp_path, monkeypatch):
    seen = []
    forward = FGCLIPForTraining.forward

    def spy(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                     self.model.get_image_features(kwargs["pixel_values"]).dtype,
                     output["loss"].dtype, {value.dtype for value in output["terms"].values()}))
        return output

    monkeypatch.setattr(FGCLIPForTraining, "forward", spy)
    bf16 = train(recipe(shapes, "train.jsonl", tmp_path / "bf16", "training.bf16=true"))
    assert seen and all(entry == (True, torch.bfloat16, torch.bfloat16, torch.float32, {torch.float32})
                        for entry in seen)
    seen.clear()
    fp32 = train(recipe(shapes, "train.jsonl", tmp_path / "fp32"))
    assert seen and all(entry[0] is False and entry[3] == torch.float32 for entry in seen)
    first_bf16, first_fp32 = losses(bf16.log_history)[0], losses(fp32.log_history)[0]
    for key in ("loss", "loss_global", "loss_regional", "loss_hard_negative"):
        assert isinstance(first_bf16[key], float)
        assert first_bf16[key] == pytest.approx(first_fp32[key], rel=3e-2), key
        assert first_bf16[key] != first_fp32[key]  # the bf16 step really ran in bf16


def test_weight_decay_only_on_matrices(tmp_path):
    step = FGCLIPForTraining(FGCLIPModel(tiny_config()), FGCLIPLoss(), regional=True, hard_negatives=True)
    trainer = FGCLIPTrainer(model=step, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                               report_to="none"))
    decay = set(trainer.get_decay_parameter_names(step))
    names = dict(step.named_parameters())
    assert decay == {name for name, parameter in names.items() if parameter.ndim >= 2}
    for name in ("model.logit_scale", "model.logit_scale_hardneg", "model.vision_model.embeddings.class_embedding",
                 "model.vision_model.post_layernorm.weight", "model.text_model.final_layer_norm.bias"):
        assert name in names and name not in decay
    for name in ("model.text_projection.weight", "model.text_model.embeddings.token_embedding.weight",
                 "model.vision_model.embeddings.patch_embedding.weight"):
        assert name in decay


def test_activation_checkpointing_recomputes_layers_with_the_same_step(shapes, tmp_path, monkeypatch):
    from fgclip.modeling_fgclip import FoldedQuickGELUMLP

    calls = Counter()
    forward = FoldedQuickGELUMLP.forward  # inside the checkpointed encoder layers, so recomputed in backward

    def counting(self, *args, **kwargs):
        calls["mlp"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FoldedQuickGELUMLP, "forward", counting)
    plain = train(recipe(shapes, "train.jsonl", tmp_path / "plain", "training.max_steps=1"))
    plain_calls, calls["mlp"] = calls["mlp"], 0
    checkpointed = train(recipe(shapes, "train.jsonl", tmp_path / "ckpt", "training.max_steps=1",
                                "training.activation_checkpointing=true"))
    # vision: the first layer, the last layer's CLS row and its value path; each of the 2 text calls:
    # the first layer and the last layer's pooled rows. The 3 first layers run again in backward;
    # the last layers' pooled rows and the value path (outside a layer call) do not
    assert plain_calls == 7 and calls["mlp"] == 7 + 3
    for key in ("loss", "grad_norm", "loss_regional", "loss_hard_negative"):
        assert losses(checkpointed.log_history)[0][key] == pytest.approx(losses(plain.log_history)[0][key], abs=1e-6)
