"""Bad input and faults, command by command: one line ``error: <file>[:<line>]: <what>`` and exit
status 2 (no traceback, no silent result), the traceback with --debug, and skip modes that count."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.cli import main as fgclip_main
from fgclip.data import FineHARDDataset, FineHARDReader
from fgclip.data.shapes import write_shapes_dataset
from fgclip.errors import DataError, ImageError, run_command
from fgclip.testing import tiny_config
from fgclip.training import load_config, train
from tiny_detection import load_tool

REPO = Path(__file__).resolve().parents[1]
TINY = "{preset: tiny, image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 2}"
FULL_DISK = "No space left on device"


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def usage_error(capsys) -> str:
    """A command-line mistake's whole output: one line (no usage text), returned without its ``(see ...)``."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(" --help)"), lines
    return lines[0][: lines[0].rindex(" (see ")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    config = tiny_config()
    FGCLIPModel(config).save_pretrained(directory)
    FGCLIPProcessor.for_config(config).save_pretrained(directory)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(directory / "scene.png")
    return directory


def damaged_copy(model_dir: Path, tmp_path: Path, damage: str) -> Path:
    directory = tmp_path / f"model-{damage}"
    shutil.copytree(model_dir, directory)
    if damage == "noweights":
        (directory / "model.safetensors").unlink()
    elif damage == "config":
        (directory / "config.json").write_text('{"model_type": "fgclip",\n  "projection_dim": 32,,\n}')
    else:
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    return directory


# ----------------------------------------------------------------------------------- fgclip
FGCLIP_CASES = {  # name -> (argv, expected error line); {image}, {model}, {tmp} are filled in
    "missing image": (["score", "{tmp}/none.png", "--box", "0,0,4,4", "--text", "a"],
                      "error: {tmp}/none.png: image file not found"),
    "zero-byte image": (["score", "{tmp}/empty.png", "--box", "0,0,4,4", "--text", "a"],
                        "error: {tmp}/empty.png: empty file (0 bytes), not an image"),
    "box outside the image": (["score", "{image}", "--box", "0,0,100,10", "--text", "a"],
                              "error: {image}: --box 0,0,100,10: expected 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48 "
                              "(pixels of this 64x48 image)"),
    "missing local model directory": (["score", "{image}", "--box", "0,0,4,4", "--text", "a", "--model",
                                       "{tmp}/runs/final"],
                                      "error: {tmp}/runs/final: checkpoint directory not found"),
    "corrupt config.json": (["score", "{image}", "--box", "0,0,4,4", "--text", "a", "--model", "{tmp}/model-config"],
                            "error: {tmp}/model-config/config.json:2: not valid JSON (Expecting property name "
                            "enclosed in double quotes, column 24)"),
    "model given as a file": (["score", "{image}", "--box", "0,0,4,4", "--text", "a", "--model", "{image}"],
                              "error: {image}: not a directory (a checkpoint is a directory holding config.json)"),
    "checkpoint without weights": (["score", "{image}", "--box", "0,0,4,4", "--text", "a", "--model",
                                    "{tmp}/model-noweights"],
                                   "error: {tmp}/model-noweights: no weights (model.safetensors, pytorch_model.bin or "
                                   "an index of shards)"),
    "truncated safetensors": (["score", "{image}", "--box", "0,0,4,4", "--text", "a", "--model",
                               "{tmp}/model-weights"],
                              "error: {tmp}/model-weights/model.safetensors: truncated safetensors file: "),
    "heatmap to a full disk": (["heatmap", "{image}", "red", "-o", "/dev/full"],
                               f"error: /dev/full: {FULL_DISK}"),
}


@pytest.mark.parametrize("case", FGCLIP_CASES)
def test_fgclip_command_bad_input(case, model_dir, tmp_path, capsys):
    argv, expected = FGCLIP_CASES[case]
    (tmp_path / "empty.png").write_bytes(b"")
    damaged_copy(model_dir, tmp_path, "config")
    damaged_copy(model_dir, tmp_path, "weights")
    damaged_copy(model_dir, tmp_path, "noweights")
    fill = {"image": model_dir / "scene.png", "model": model_dir, "tmp": tmp_path}
    argv = [argument.format(**fill) for argument in argv]
    if "--model" not in argv:
        argv += ["--model", str(model_dir)]
    assert fgclip_main(argv) == 2
    assert last_error(capsys).startswith(expected.format(**fill))


def test_fgclip_score_refuses_an_empty_text(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_status:
        fgclip_main(["score", str(model_dir / "scene.png"), "--box", "0,0,4,4", "--text", " ",
                     "--model", str(model_dir)])
    assert exit_status.value.code == 2
    assert usage_error(capsys) == "error: --text: a text is empty; give words to look for"


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch):
    argv = ["score", str(tmp_path / "none.png"), "--box", "0,0,4,4", "--text", "a"]
    with pytest.raises(ImageError, match="none.png: image file not found"):
        fgclip_main([*argv, "--debug"])
    monkeypatch.setenv("FGCLIP_DEBUG", "1")
    with pytest.raises(ImageError):
        fgclip_main(argv)
    monkeypatch.delenv("FGCLIP_DEBUG")
    with pytest.raises(ZeroDivisionError):
        run_command(lambda _: 1 / 0, [])


def test_a_full_stdout_fails_the_command(model_dir):
    command = [sys.executable, "-m", "fgclip.cli", "score", str(model_dir / "scene.png"), "--box", "0,0,32,48",
               "--text", "a red square", "--model", str(model_dir)]
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: <stdout>: {FULL_DISK}"


# ----------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, seed=5, num_train=8, num_test=1, image_size=32)
    return root


def shapes_records(shapes: Path) -> list[dict]:
    return [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()]


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def train_argv(shapes: Path, train_file: Path, out: Path, *extra: str) -> list[str]:
    return [str(REPO / "configs" / "fgclip" / "shapes_stage2.yaml"),
            "model.init=config", f"model.config={TINY}", f"data.train={train_file}", f"data.image_root={shapes}",
            f"training.output_dir={out}", "training.per_device_train_batch_size=2", "training.max_steps=4",
            "training.logging_steps=1", "training.save_steps=100", "training.warmup_steps=0",
            "training.dataloader_num_workers=0", "training.use_cpu=true", "training.bf16=false", *extra]


def test_training_command_bad_input(shapes, tmp_path, capsys):
    tool = load_tool("train_fgclip")
    records = shapes_records(shapes)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("training:\n  output_dir: out\n   seed: 3\n")
    cases = [  # (argv, expected error line)
        ([str(recipe)], f"error: {recipe}:3: YAML syntax error: mapping values are not allowed here"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, "training.num_train_epochs=0", "training.max_steps=-1"),
         f"error: {REPO}/configs/fgclip/shapes_stage2.yaml: training.num_train_epochs: expected a number above 0 "
         "(or max_steps > 0), got 0"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, "training.learning_rate=-0.01"),
         f"error: {REPO}/configs/fgclip/shapes_stage2.yaml: training.learning_rate: expected a learning rate >= 0, "
         "got -0.01"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, "training.output_dir=null"),
         f"error: {REPO}/configs/fgclip/shapes_stage2.yaml: training.output_dir: not set; give the folder for "
         "checkpoints and the final model (e.g. training.output_dir=outputs/run)"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, "training.per_device_train_batch_size=0"),
         f"error: {REPO}/configs/fgclip/shapes_stage2.yaml: training.per_device_train_batch_size: expected a batch "
         "size of at least 1, got 0"),
        (train_argv(shapes, write_records(tmp_path / "abs.jsonl", [{**records[0], "f_path": "/etc/hostname"}]),
                    tmp_path),
         f"error: {tmp_path}/abs.jsonl line 1: f_path: path '/etc/hostname' is absolute; data paths are relative to "
         "their root (give --allow-outside-root to read it anyway)"),
        (train_argv(shapes, write_records(tmp_path / "up.jsonl", [{**records[0], "f_path": "../x/../../y.png"}]),
                    tmp_path),
         f"error: {tmp_path}/up.jsonl line 1: f_path: path '../x/../../y.png' leaves its root with '..' "
         "(give --allow-outside-root to read it anyway)"),
        (train_argv(shapes, write_records(tmp_path / "gone.jsonl", [{**records[0], "f_path": "images/gone.png"}]),
                    tmp_path),
         f"error: {tmp_path}/gone.jsonl line 1: f_path: image not found: {shapes}/images/gone.png"),
        (train_argv(shapes, write_records(tmp_path / "noboxes.jsonl", [{**r, "bbox_info": []} for r in records]),
                    tmp_path),
         f"error: {tmp_path}/noboxes.jsonl: none of its 8 records has a box (bbox_info), but loss.regional is on in "
         f"{REPO}/configs/fgclip/shapes_stage2.yaml; give stage-2 data or set loss.regional=false"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, "model.init=pretrained", f"model.path={tmp_path}/no/run"),
         f"error: {tmp_path}/no/run: checkpoint directory not found"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, f"data.train={tmp_path}/s-{{0..1}}.tar",
                    "data.shards=true"),
         f"error: {tmp_path}/s-0.tar: shard not found (2 of 2 shards are missing)"),
        (train_argv(shapes, shapes / "train.jsonl", tmp_path, "data.shards=true", "training.max_steps=-1"),
         f"error: {REPO}/configs/fgclip/shapes_stage2.yaml: data.shards: a shard stream has no length; set "
         "training.max_steps"),
    ]
    for argv, expected in cases:
        assert run_command(tool.main, argv) == 2, expected
        assert last_error(capsys) == expected


def test_data_without_a_usable_record_is_named_before_training(shapes, tmp_path, capsys):
    """A file that is not an image is a bad record when the data is indexed, before any step; when every
    record is bad and skipped, the error says so (not that loss.regional should be switched off)."""
    tool = load_tool("train_fgclip")
    root = tmp_path / "root"
    shutil.copytree(shapes / "images", root / "images")
    records = shapes_records(shapes)
    for record in records:
        (root / record["f_path"]).write_text("not an image")
    data = write_records(tmp_path / "train.jsonl", records)
    first = root / records[0]["f_path"]
    with pytest.raises(DataError, match=rf"^{data} line 1: f_path: {first}: not an image file PIL can read"):
        FineHARDReader(data, image_root=root)  # at indexing

    argv = train_argv(shapes, data, tmp_path / "run", f"data.image_root={root}", "data.skip_bad_records=true")
    assert run_command(tool.main, argv) == 2
    assert last_error(capsys).startswith(
        f"error: {data}: no usable record to train on: every record was skipped as bad (skipped 8 of 8 records "
        f"(f_path: bad image: 8); first: {data} line 1: f_path: {first}: not an image file PIL can read")
    assert not (tmp_path / "run").exists()
    empty = write_records(tmp_path / "empty.jsonl", [])
    assert run_command(tool.main, train_argv(shapes, empty, tmp_path / "run")) == 2
    assert last_error(capsys) == f"error: {empty}: no usable record to train on: it holds no records"


def test_allow_outside_root_accepts_paths_that_leave_the_root(shapes, tmp_path):
    records = shapes_records(shapes)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(shapes / records[0]["f_path"], outside)
    data = write_records(tmp_path / "outside.jsonl", [{**records[0], "f_path": str(outside)}])
    assert len(FineHARDReader(data, image_root=shapes, allow_outside_root=True)) == 1
    config = load_config(train_argv(shapes, data, tmp_path)[0], train_argv(shapes, data, tmp_path)[1:]
                         + ["data.allow_outside_root=true"])
    assert config.data.allow_outside_root


def test_save_strategy_no_reads_as_the_string_no(shapes, tmp_path):
    argv = train_argv(shapes, shapes / "train.jsonl", tmp_path)
    recipe = tmp_path / "no_saves.yaml"
    recipe.write_text(f"_base_: {argv[0]}\ntraining:\n  save_strategy: no\n")
    assert load_config(recipe, argv[1:]).training_arguments().save_strategy == "no"


def cut_in_its_data(path: Path) -> Path:
    """Rewrite the image at ``path`` as a JPEG cut in its scan data: its header (size, EXIF) reads, so it
    passes indexing, and decoding it fails."""
    encoded = io.BytesIO()
    Image.open(path).convert("RGB").save(encoded, format="JPEG")
    path.write_bytes(encoded.getvalue()[:-40])
    return path


def test_unreadable_images_are_skipped_and_counted_in_training(shapes, tmp_path):
    records = shapes_records(shapes)
    root = tmp_path / "root"
    shutil.copytree(shapes / "images", root / "images")
    bad = cut_in_its_data(root / records[5]["f_path"])
    data = write_records(tmp_path / "train.jsonl", records)
    assert len(FineHARDReader(data, image_root=root)) == 8  # so it passes indexing, and fails when read
    argv = train_argv(shapes, data, tmp_path / "run", f"data.image_root={root}")
    with pytest.raises(ImageError, match=rf"^{data} line 6: f_path: {bad}: truncated or corrupt image"):
        train(load_config(argv[0], argv[1:]))
    dataset = FineHARDDataset(data, root, FGCLIPProcessor(image_size=32), skip_bad_records=True)
    assert dataset[5]["skipped_records"] == ["f_path: bad image"] and dataset[5]["long_text"] == records[6]["caption"]
    # 8 records, batch 2, 4 steps: one epoch, each record drawn once, the bad one once
    result = train(load_config(argv[0], [*argv[1:], "data.skip_bad_records=true"]))
    assert result.skipped_records == {"f_path: bad image": 1}
    assert result.skipped_summary == "skipped 1 bad record(s) (f_path: bad image: 1)"


def test_resume_passes_over_an_unreadable_complete_checkpoint(tmp_path, caplog):
    from safetensors.torch import save_file

    from fgclip.training.trainer import COMPLETE_MARKER, resumable_checkpoint

    for step in (2, 4):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        save_file({"w": torch.zeros(100)}, str(checkpoint / "model.safetensors"))
        torch.save({"state": {}}, checkpoint / "optimizer.pt")
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (checkpoint / COMPLETE_MARKER).write_text(f"{step}\n")
    newest = tmp_path / "checkpoint-4" / "model.safetensors"
    assert resumable_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    newest.write_bytes(newest.read_bytes()[:-8])
    with caplog.at_level("WARNING"):
        assert resumable_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert (f"{tmp_path}/checkpoint-4 is marked COMPLETE but cannot be read ({newest}: truncated safetensors file"
            in caplog.text and "resuming from the previous complete checkpoint instead" in caplog.text)
    optimizer = tmp_path / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert resumable_checkpoint(tmp_path) is None


def test_a_run_whose_newest_checkpoint_is_damaged_resumes_from_the_previous_one(shapes, tmp_path, caplog):
    argv = train_argv(shapes, shapes / "train.jsonl", tmp_path / "run", "training.save_steps=2",
                      "training.learning_rate=1e-3", "training.seed=3")
    first = train(load_config(argv[0], argv[1:]))
    weights = tmp_path / "run" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # damaged after it was marked complete
    with caplog.at_level("INFO"):
        resumed = train(load_config(argv[0], argv[1:]), resume=True)
    assert f"{tmp_path}/run/checkpoint-4 is marked COMPLETE but cannot be read ({weights}: truncated" in caplog.text
    assert f"resuming from {tmp_path}/run/checkpoint-2" in caplog.text
    losses = {entry["step"]: entry["loss"] for entry in first.log_history if "loss" in entry}
    again = {entry["step"]: entry["loss"] for entry in resumed.log_history if "loss" in entry}
    assert [again[step] for step in (3, 4)] == pytest.approx([losses[3], losses[4]], abs=1e-6)  # steps 3-4 re-run


# ----------------------------------------------------------------------------------- evaluation
def fgovd_record(**fields) -> dict:
    return {"img_path": "scene.png", "bbox": [40, 10, 30, 20], "pos_expression": "a red square",
            "neg_expression": ["a blue square"], **fields}


@pytest.mark.parametrize("record, expected", [
    (fgovd_record(), "{file} line 1: bbox [40, 10, 30, 20] (x, y, w, h) lies outside the 64x48 image"),
    (fgovd_record(width=60, height=48), "{file} line 1: bbox [40, 10, 30, 20] (x, y, w, h) lies outside the "
                                        "60x48 image"),
    (fgovd_record(img_path="/etc/hostname"), "{file} line 1: image path '/etc/hostname' is absolute; data paths are "
                                             "relative to their root (give --allow-outside-root to read it anyway)"),
    (fgovd_record(img_path="empty.png"), "{file} line 1: {root}/empty.png: empty file (0 bytes), not an image"),
])
def test_fgovd_boxes_and_paths_are_checked(record, expected, model_dir, tmp_path):
    from fgclip.eval.common import DataError
    from fgclip.eval.fgovd import load_fgovd

    root = tmp_path / "images"
    root.mkdir()
    shutil.copy(model_dir / "scene.png", root / "scene.png")
    (root / "empty.png").write_bytes(b"")
    file = write_records(tmp_path / "hard.jsonl", [record])
    with pytest.raises(DataError) as error:
        load_fgovd(file, root)
    assert str(error.value) == expected.format(file=file, root=root)


def test_evaluation_command_bad_input(model_dir, tmp_path, capsys):
    from fgclip.eval.cli import main

    assert main(["--model", str(tmp_path / "nowhere"), "--data-root", str(tmp_path)]) == 2
    assert last_error(capsys) == (f"error: --model {tmp_path}/nowhere: checkpoint directory not found: "
                                  f"{tmp_path}/nowhere")
    assert main(["--model", str(model_dir), "--data-root", str(tmp_path / "data")]) == 2
    assert last_error(capsys) == f"error: --data-root {tmp_path}/data: directory not found"
    with pytest.raises(SystemExit) as exit_status:
        main(["--model", str(model_dir), "--tasks", "fgovd,nope"])
    assert exit_status.value.code == 2
    assert usage_error(capsys) == ("error: --tasks: unknown task(s) ['nope']; expected some of fgovd, boxcls, "
                                   "retrieval, zeroshot, matching")
    data = tmp_path / "layout"
    data.mkdir()
    assert main(["--model", str(model_dir), "--data-root", str(data), "--datasets", "nope"]) == 2
    assert last_error(capsys).startswith("error: --datasets: unknown dataset(s) nope; expected some of ")
    assert main(["--model", str(model_dir), "--data-root", str(data), "--path", "fgovd.dir"]) == 2
    assert last_error(capsys).startswith("error: --path fgovd.dir: expected DATASET.KEY=PATH (with '=')")
    with pytest.raises(SystemExit) as exit_status:
        main(["--model", str(model_dir), "--batch-size", "0"])
    assert exit_status.value.code == 2
    assert usage_error(capsys) == "error: --batch-size: expected an integer >= 1, got 0"


def test_output_folders_are_checked_before_any_work(model_dir, shapes, tmp_path, capsys, monkeypatch):
    """An output path that is a file (or lies inside one) is named before anything loads or trains."""
    from fgclip.eval.cli import main as eval_main

    taken = tmp_path / "taken"
    taken.write_text("a file")
    monkeypatch.setattr("fgclip.encoders.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert eval_main(["--model", str(model_dir), "--output-dir", str(taken)]) == 2
    assert last_error(capsys) == (f"error: --output-dir {taken}: is a file, not a directory (give a folder for the "
                                  "outputs)")
    image = shapes / shapes_records(shapes)[0]["f_path"]
    assert fgclip_main(["heatmap", str(image), "a cat", "--model", str(model_dir), "-o", f"{taken}/map.png"]) == 2
    assert last_error(capsys) == (f"error: -o {taken}/map.png: {taken} is a file, not a directory (give a folder "
                                  "for the outputs)")
    assert fgclip_main(["heatmap", str(image), "a cat", "--model", str(model_dir), "-o", str(tmp_path)]) == 2
    assert last_error(capsys) == f"error: -o {tmp_path}: is a directory, not a file (give a file name)"
    argv = train_argv(shapes, shapes / "train.jsonl", taken / "run")
    assert run_command(load_tool("train_fgclip").main, argv) == 2
    assert last_error(capsys) == (f"error: {REPO}/configs/fgclip/shapes_stage2.yaml: training.output_dir "
                                  f"{taken}/run: {taken} is a file, not a directory (give a folder for the outputs)")


def test_outputs_are_written_whole_or_not_at_all(tmp_path):
    """atomic_output: a write that fails midway leaves the earlier file in place and no temporary file."""
    from fgclip.errors import atomic_output, write_atomically

    target = tmp_path / "results.json"
    write_atomically(target, '{"old": true}\n')
    with pytest.raises(RuntimeError), atomic_output(target) as handle:
        handle.write('{"new": ')
        raise RuntimeError("the run failed while writing")
    assert target.read_text() == '{"old": true}\n' and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(OSError) as error, atomic_output(tmp_path / "no" / "such" / "dir.json") as handle:
        handle.write("x")
    assert error.value.filename == str(tmp_path / "no" / "such" / "dir.json")


# ----------------------------------------------------------------------------------- curation
def test_curation_names_or_skips_and_counts_bad_images(tmp_path, monkeypatch, capsys):
    tool = load_tool("curate_finehard")
    for stage in ("VLMCaptioner", "SpacyExpressionParser", "PipelineGrounder", "LLMNegativeWriter"):
        monkeypatch.setattr(tool, stage, lambda *args, **kwargs: None)  # never reached: every image is bad
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"GIF89a but cut")
    argv = ["--images", str(tmp_path), "--output", str(tmp_path / "out.jsonl")]
    assert run_command(tool.main, argv) == 2
    assert last_error(capsys) == f"error: {tmp_path}/a.png: empty file (0 bytes), not an image"
    assert run_command(tool.main, [*argv, "--skip-errors"]) == 0
    assert capsys.readouterr().out.strip() == ("wrote 0 records (0 regions, 0 with negatives), 0 already done, "
                                               "skipped 2 (bad image: 2)")


# ----------------------------------------------------------------------------------- LLaVA
@pytest.mark.parametrize("variable", ["NPROC", "GLOBAL_BATCH", "PER_DEVICE_BATCH"])
@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_launch_scripts_refuse_non_integers_before_arithmetic(script, variable, tmp_path):
    marker = tmp_path / "ran"
    value = f"HOME[$(touch {marker})]"
    env = {**os.environ, "LANGUAGE_MODEL": "x", "FGCLIP": "x", "PRETRAINED": "x", "DATA": "x", "IMAGES": "x",
           "OUTPUT": "x", variable: value}
    result = subprocess.run(["bash", str(REPO / "mllm" / f"{script}.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr == f"error: mllm/{script}.sh: {variable} must be a positive integer, got '{value}'\n"


@pytest.mark.parametrize("image, allowed, expected", [
    ("../secret.png", False, "{data}: record 0: image: path '../secret.png' leaves its root with '..' "
                             "(give --allow-outside-root to read it anyway)"),
    ("/etc/hostname", False, "{data}: record 0: image: path '/etc/hostname' is absolute; data paths are relative to "
                             "their root (give --allow-outside-root to read it anyway)"),
    ("missing.png", False, "{data}: record 0: image file not found: {root}/missing.png"),
])
def test_llava_record_image_paths_stay_under_the_image_folder(image, allowed, expected, tmp_path):
    from transformers import AutoTokenizer, LlavaImageProcessorPil

    from mllm import prepare_tokenizer
    from mllm.data import ConversationDataset, RecordError

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(REPO / "tests" / "data" / "mllm" / "vicuna"))
    data = write_records(tmp_path / "records.jsonl", [{"id": 0, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]}])
    root = tmp_path / "images"
    with pytest.raises(RecordError) as error:
        ConversationDataset(data, tokenizer, LlavaImageProcessorPil(), 4, root, "v1", 64,
                            allow_outside_root=allowed)
    assert str(error.value) == expected.format(data=data, root=root).replace("record 0", "record 0 (id 0)")


def test_llava_answer_file_to_a_full_disk_fails(capsys):
    from mllm.eval import pope

    data = REPO / "tests" / "data" / "mllm_eval" / "pope" / "coco"
    assert pope.main(["build", "--annotation-dir", str(data), "--output", "/dev/full"]) == 2
    assert last_error(capsys) == f"error: /dev/full: {FULL_DISK}"


@pytest.mark.parametrize("question, expected", [
    ({"question_id": 1, "image": "../q.png", "text": "What?"},
     "error: {questions}:1: image: path '../q.png' leaves its root with '..' (give --allow-outside-root to read it "
     "anyway)"),
    ({"question_id": 1, "image": "q.png", "text": "What?"}, "error: {questions}:1: image file not found: {root}/q.png"),
    ({"question_id": 1, "text": None}, "error: {questions}:1: field 'text' must be a string"),
])
def test_llava_generation_checks_its_questions_before_loading_the_model(question, expected, tmp_path, capsys):
    from mllm.eval import generate

    questions = write_records(tmp_path / "questions.jsonl", [question])
    root = tmp_path / "images"
    argv = ["--model", str(tmp_path / "no-model"), "--questions", str(questions), "--answers",
            str(tmp_path / "answers.jsonl"), "--image-folder", str(root)]
    assert generate.main(argv) == 2
    assert last_error(capsys) == expected.format(questions=questions, root=root)


def test_llava_commands_name_missing_inputs_before_loading(tmp_path, capsys):
    from mllm import builder, merge_lora
    from mllm import train as llava_train

    cases = [
        (llava_train.main, ["--data_path", f"{tmp_path}/none.json", "--model_name_or_path", f"{tmp_path}/llava",
                            "--output_dir", f"{tmp_path}/out"],
         f"error: {tmp_path}/none.json: conversation file not found"),
        (builder.main, ["--language-model", f"{tmp_path}/lm", "--fgclip", f"{tmp_path}/fg",
                        "--output", f"{tmp_path}/o"],
         f"error: {tmp_path}/fg: checkpoint directory not found"),
        (merge_lora.main, ["--adapter", f"{tmp_path}/a", "--output", f"{tmp_path}/o", "--base", f"{tmp_path}/b"],
         f"error: {tmp_path}/b: base model directory not found (pass --base)"),
    ]
    for main, argv, expected in cases:
        assert run_command(main, argv) == 2
        assert last_error(capsys) == expected


def test_errors_from_dataloader_workers_stay_one_line(shapes, tmp_path, capsys):
    """torch re-raises a worker's error with the worker's traceback in its message; the report keeps the
    original message only (FineHARD files and shards)."""
    from fgclip.data import write_finehard_shards

    records = shapes_records(shapes)
    root = tmp_path / "root"
    shutil.copytree(shapes / "images", root / "images")
    bad = cut_in_its_data(root / records[5]["f_path"])
    data = write_records(tmp_path / "train.jsonl", records)
    argv = train_argv(shapes, data, tmp_path / "run", f"data.image_root={root}", "training.dataloader_num_workers=1",
                      "training.per_device_train_batch_size=8", "training.max_steps=1")
    assert run_command(load_tool("train_fgclip").main, argv) == 2
    assert last_error(capsys).startswith(f"error: {data} line 6: f_path: {bad}: truncated or corrupt image (")

    shard = tmp_path / "shards" / "s-000000.tar"
    write_finehard_shards(data, root, str(tmp_path / "shards" / "s-%06d.tar"))
    argv = train_argv(shapes, data, tmp_path / "run", f"data.train={shard}", "data.shards=true",
                      "training.dataloader_num_workers=1", "training.per_device_train_batch_size=8",
                      "training.max_steps=1")
    assert run_command(load_tool("train_fgclip").main, argv) == 2
    assert last_error(capsys) == (f"error: {shard} sample 000000005: png: cannot decode image: truncated or corrupt "
                                  "image (image file is truncated (63 bytes not processed))")
