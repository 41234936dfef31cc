"""Bad input and faults in the detection tools (tools/train_det.py, test_det.py, detect.py,
dump_class_embeddings.py): one line ``error: <file>[:<line>]: <what>`` and exit status 2, no
traceback and no silent result; without mmcv's compiled ops, one line saying to run
``make setup-detection``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("mmdet", reason="detection extra not installed (make setup-detection)")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (make setup-detection)")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import detection  # noqa: E402,F401  (registers the modules)
from detection.class_embeddings import load_class_embeddings, save_class_embeddings  # noqa: E402
from fgclip import FGCLIPProcessor  # noqa: E402
from fgclip.data.shapes import SHAPES, write_coco_detection  # noqa: E402
from fgclip.errors import run_command  # noqa: E402
from fgclip.eval.runner import DATASETS, prepare  # noqa: E402
from fgclip.eval.spec import EvalOptions  # noqa: E402
from tiny_detection import ASSETS, load_tool, save_tiny_fgclip  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "fvit_tiny_cpu.py")
VAL_IMAGE = f"{ASSETS}/shapes/val/000000.png"
FULL_DISK = "No space left on device"
NAN_ROW = 3  # "star"
UNSAFE_CHECKPOINT = ("not a safe checkpoint: it pickles a Python object (argparse.Namespace) besides tensors and plain "
                     "values, which only code could rebuild (if you trust its source, load it with "
                     "torch.load(weights_only=False) and torch.save its tensors and plain values only, e.g. "
                     "{{'state_dict': state_dict, 'meta': {{}}}})")
REWRITE = "rewrite it with tools/dump_class_embeddings.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """What the tiny config points at (FG-CLIP, shape scenes, class embeddings), an untrained
    detector checkpoint, and damaged copies: text towers with NaN weights (FG-CLIP, detector), an
    embedding file with a NaN row, a truncated checkpoint, a config with a syntax error, an annotation
    file that is not JSON."""
    root = tmp_path_factory.mktemp("detection-bad")
    assets = root / ASSETS
    model = save_tiny_fgclip(assets / "fgclip")
    with torch.no_grad():
        model.text_projection.weight[0, 0] = float("nan")
    model.save_pretrained(root / "nan_fgclip")
    FGCLIPProcessor.for_config(model.config).save_pretrained(root / "nan_fgclip")
    write_coco_detection(assets / "shapes", "train", num_images=4, seed=0, image_size=64)
    write_coco_detection(assets / "shapes", "val", num_images=2, seed=1, image_size=64)
    width = model.config.projection_dim
    embeddings = torch.nn.functional.normalize(torch.randn(len(SHAPES), width), dim=-1)
    background = torch.nn.functional.normalize(torch.randn(width), dim=0)
    save_class_embeddings(assets / "shapes_embeddings.pt", SHAPES, embeddings, ["a {}."], "tiny", background)
    content = {"class_names": list(SHAPES), "embeddings": embeddings[:, :8], "background": background, "templates": [],
               "model": "tiny"}
    torch.save(content, root / "cut_embeddings.pt")  # 8-d rows, the 16-d background
    torch.save({**content, "background": background[:8]}, root / "cut_file.pt")  # 8-d throughout
    torch.save({**content, "templates": argparse.Namespace()}, root / "pickled_embeddings.pt")
    (root / "garbage_embeddings.pt").write_bytes(b"\x80\x04garbage")
    embeddings[NAN_ROW, 5] = float("nan")
    torch.save({"class_names": list(SHAPES), "embeddings": embeddings, "background": background, "templates": [],
                "model": "tiny"}, root / "nan_embeddings.pt")

    previous = os.getcwd()
    os.chdir(root)
    try:
        init_default_scope("mmdet")
        detector = MODELS.build(Config.fromfile(TINY_CONFIG).model)
    finally:
        os.chdir(previous)
    torch.save({"state_dict": detector.state_dict(), "meta": {}}, root / "detector.pth")
    with torch.no_grad():
        detector.backbone.clip.text_projection.weight[0, 0] = float("nan")
    torch.save({"state_dict": detector.state_dict(), "meta": {}}, root / "nan_detector.pth")
    torch.save({"state_dict": detector.state_dict(), "meta": {"args": argparse.Namespace(lr=1.0)}},
               root / "pickled.pth")
    (root / "truncated.pth").write_bytes((root / "detector.pth").read_bytes()[:-100])
    (root / "garbage.pth").write_bytes(b"\x80\x04garbage")  # a pickle protocol mark, then no pickle
    (root / "syntax.py").write_text("_base_ = ['x.py']\nmodel = dict(backbone=dict(\n")
    (root / "annotations.json").write_text('{"images": [],\n  "categories": [,]}\n')
    coco = json.loads((assets / "shapes" / "annotations" / "instances_train.json").read_text())
    del coco["images"][1]["height"]
    (root / "no_height.json").write_text(json.dumps(coco))
    (root / "not_an_image.png").write_text("hello")
    return root


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# tool -> name -> (argv, expected error line); {tmp} is the workspace, {config} the tiny config
CASES = {
    "train_det": {
        "missing config": (["{tmp}/none.py"], "error: {tmp}/none.py: config file not found"),
        "config syntax error": (["{tmp}/syntax.py"],
                                "error: {tmp}/syntax.py:2: Python syntax error ('(' was never closed), column 27"),
        "missing annotation file": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "train_dataloader.dataset.ann_file=none.json"],
            f"error: {ASSETS}/shapes/none.json: annotation file not found (check ann_file and data_root in the config)"),
        "annotation file not JSON": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "train_dataloader.dataset.ann_file={tmp}/annotations.json"],
            "error: {tmp}/annotations.json:2: not valid JSON (Expecting value, column 18)"),
        "missing image": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "train_dataloader.dataset.data_prefix.img=none/"],
            f"error: {ASSETS}/shapes/annotations/instances_train.json: image 1: file {ASSETS}/shapes/none/000000.png not "
            "found (check data_root and data_prefix in the config)"),
        "annotation record without a field": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "train_dataloader.dataset.ann_file={tmp}/no_height.json"],
            "error: {tmp}/no_height.json: images[1]: no field 'height'"),
        "missing backbone checkpoint": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "model.backbone.checkpoint={tmp}/none"],
            "error: {tmp}/none: checkpoint directory not found (set by model.backbone.checkpoint)"),
        "missing class-embedding file": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "model.roi_head.bbox_head.class_embeddings={tmp}/none.pt"],
            "error: {tmp}/none.pt: class-embedding file not found (set by model.roi_head.bbox_head.class_embeddings); "
            "write one with tools/dump_class_embeddings.py"),
        "NaN in the class-embedding file": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options",
             "model.roi_head.bbox_head.class_embeddings={tmp}/nan_embeddings.pt"],
            f"error: {{tmp}}/nan_embeddings.pt: field 'embeddings', row {NAN_ROW} ('star') holds NaN or inf "
            "(1 of 7 rows); rewrite it with tools/dump_class_embeddings.py"),
        "class embeddings narrower than their background": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "model.roi_head.bbox_head.class_embeddings={tmp}/cut_embeddings.pt"],
            "error: {tmp}/cut_embeddings.pt: its class embeddings are 8-d but its background embedding is 16-d (one text "
            f"tower writes both: the file was cut or mixed); {REWRITE}"),
        "class embeddings narrower than the model's": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "model.roi_head.bbox_head.class_embeddings={tmp}/cut_file.pt"],
            f"error: {{tmp}}/cut_file.pt: its class embeddings are 8-d but the model's CLIP ({ASSETS}/fgclip) embeds regions "
            "in 16-d; rewrite it with tools/dump_class_embeddings.py --config <this config>"),
        "class-embedding file with pickled objects": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options",
             "model.roi_head.bbox_head.class_embeddings={tmp}/pickled_embeddings.pt"],
            "error: {tmp}/pickled_embeddings.pt: not a safe class-embedding file: it pickles a Python object "
            f"(argparse.Namespace) besides tensors and plain values, which only code could rebuild ({REWRITE})"),
        "class-embedding file that is no pickle": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options",
             "model.roi_head.bbox_head.class_embeddings={tmp}/garbage_embeddings.pt"],
            "error: {tmp}/garbage_embeddings.pt: not a class-embedding file at all: a damaged or foreign pickle stream, "
            f"unknown pickle operation 103 ({REWRITE})"),
        "bad config field": (
            ["{config}", "--work-dir", "{tmp}/w", "--cfg-options", "model.roi_head.bbox_head.num_cls_fcs=0"],
            "error: {config}: model.roi_head.bbox_head.num_cls_fcs must be >= 1 (its last fc gives the region "
            "embedding), got 0"),
        "resume from a checkpoint with pickled objects": (
            ["{config}", "--work-dir", "{tmp}/w", "--resume", "{tmp}/pickled.pth"],
            "error: {tmp}/pickled.pth: " + UNSAFE_CHECKPOINT),
        "missing checkpoint to resume": (["{config}", "--work-dir", "{tmp}/w", "--resume", "{tmp}/none.pth"],
                                         "error: {tmp}/none.pth: checkpoint file not found (a .pth written by "
                                         "tools/train_det.py)"),
    },
    "test_det": {
        "missing checkpoint": (["{config}", "{tmp}/none.pth"],
                               "error: {tmp}/none.pth: checkpoint file not found (a .pth written by tools/train_det.py)"),
        "truncated checkpoint": (["{config}", "{tmp}/truncated.pth"],
                                 "error: {tmp}/truncated.pth: truncated or corrupt checkpoint (File is not a zip file); "
                                 "copy or save it again"),
        "checkpoint with pickled objects": (
            ["{config}", "{tmp}/pickled.pth", "--work-dir", "{tmp}/t"],
            "error: {tmp}/pickled.pth: " + UNSAFE_CHECKPOINT),
        "checkpoint that is no pickle": (
            ["{config}", "{tmp}/garbage.pth", "--work-dir", "{tmp}/t"],
            "error: {tmp}/garbage.pth: not a checkpoint at all: a damaged or foreign pickle stream, unknown pickle "
            "operation 103 (copy it again, or give a .pth written by tools/train_det.py)"),
        "metrics to a full disk": (["{config}", "{tmp}/detector.pth", "--work-dir", "{tmp}/t", "-o", "/dev/full"],
                                   f"error: /dev/full: {FULL_DISK}"),
    },
    "detect": {
        "missing image": (["{tmp}/none.png", "--vocab", "cat", "--config", "{config}", "--checkpoint", "{tmp}/detector.pth"],
                          "error: {tmp}/none.png: image file not found"),
        "not an image": (["{tmp}/not_an_image.png", "--vocab", "cat", "--config", "{config}", "--checkpoint",
                          "{tmp}/detector.pth"],
                         "error: {tmp}/not_an_image.png: not an image file PIL can read (cannot identify image file "
                         "'{tmp}/not_an_image.png')"),
        "score threshold NaN": ([VAL_IMAGE, "--vocab", "cat", "--config", "{config}", "--checkpoint", "{tmp}/detector.pth",
                                 "--score-thr", "nan"],
                                "error: --score-thr nan: expected a number from 0 to 1 (detection scores are probabilities)"),
        "score threshold above 1": ([VAL_IMAGE, "--vocab", "cat", "--config", "{config}", "--checkpoint",
                                     "{tmp}/detector.pth", "--score-thr", "1.5"],
                                    "error: --score-thr 1.5: expected a number from 0 to 1 (detection scores are "
                                    "probabilities)"),
        "empty vocabulary": ([VAL_IMAGE, "--vocab", " , ", "--config", "{config}", "--checkpoint", "{tmp}/detector.pth"],
                             "error: --vocab ' , ': expected distinct, non-empty comma-separated class names"),
        "missing config": ([VAL_IMAGE, "--vocab", "cat", "--config", "{tmp}/none.py", "--checkpoint", "{tmp}/detector.pth"],
                           "error: {tmp}/none.py: config file not found"),
        "checkpoint with pickled objects": (
            [VAL_IMAGE, "--vocab", "cat", "--config", "{config}", "--checkpoint", "{tmp}/pickled.pth"],
            "error: {tmp}/pickled.pth: " + UNSAFE_CHECKPOINT),
        "truncated checkpoint": ([VAL_IMAGE, "--vocab", "cat", "--config", "{config}", "--checkpoint", "{tmp}/truncated.pth"],
                                 "error: {tmp}/truncated.pth: truncated or corrupt checkpoint (File is not a zip file); "
                                 "copy or save it again"),
        "NaN text tower": ([VAL_IMAGE, "--vocab", "cat,circle", "--config", "{config}", "--checkpoint",
                            "{tmp}/nan_detector.pth"],
                           "error: {tmp}/nan_detector.pth: its text tower embeds ['cat', 'circle'] as NaN or inf "
                           "(diverged or corrupt weights)"),
        "drawing to a full disk": ([VAL_IMAGE, "--vocab", "cat,circle", "--config", "{config}", "--checkpoint",
                                    "{tmp}/detector.pth", "--score-thr", "0", "-o", "/dev/full"],
                                   f"error: /dev/full: {FULL_DISK}"),
    },
    "dump_class_embeddings": {
        "missing vocabulary file": (["--model", f"{ASSETS}/fgclip", "--vocab-file", "{tmp}/none.txt", "-o", "{tmp}/e.pt"],
                                    "error: {tmp}/none.txt: class names file not found"),
        "missing model": (["--model", "{tmp}/none", "--vocab", "cat", "-o", "{tmp}/e.pt"],
                          "error: {tmp}/none: checkpoint directory not found"),
        "missing config": (["--config", "{tmp}/none.py"], "error: {tmp}/none.py: config file not found"),
        "duplicate names": (["--model", f"{ASSETS}/fgclip", "--vocab", "cat,dog,cat", "-o", "{tmp}/e.pt"],
                            "error: --vocab: duplicate class names ['cat']"),
        "NaN text tower": (["--model", "{tmp}/nan_fgclip", "--vocab", "cat,dog", "--templates", "fgclip",
                            "-o", "{tmp}/nan_out.pt"],
                           "error: {tmp}/nan_out.pt: field 'embeddings', row 0 ('cat') holds NaN or inf (2 of 2 rows); "
                           "the text tower of {tmp}/nan_fgclip is not finite (diverged or corrupt weights); "
                           "nothing written"),
        "embeddings to a full disk": (["--model", f"{ASSETS}/fgclip", "--vocab", "cat", "--templates", "fgclip",
                                       "-o", "/dev/full"],
                                      f"error: /dev/full: {FULL_DISK}"),
    },
}


@pytest.mark.parametrize("tool,case", [(tool, case) for tool, cases in CASES.items() for case in cases])
def test_bad_input_is_one_line_with_status_2(tool, case, in_workspace, capsys):
    argv, expected = CASES[tool][case]
    fill = {"tmp": str(in_workspace), "config": TINY_CONFIG}
    status = run_command(load_tool(tool).main, [arg.format(**fill) for arg in argv])
    assert (status, last_error(capsys)) == (2, expected.format(**fill))
    assert not Path(in_workspace, "nan_out.pt").exists()  # nothing written for non-finite embeddings


def test_class_embeddings_with_inf_background_are_refused(tmp_path):
    """Reading: a non-finite background row is named too (a NaN in a class row: the table above)."""
    path = tmp_path / "inf.pt"
    torch.save({"class_names": ["a"], "embeddings": torch.ones(1, 2), "background": torch.tensor([1.0, float("inf")])}, path)
    with pytest.raises(ValueError, match=f"^{path}: field 'background' holds NaN or inf; rewrite it with"):
        load_class_embeddings(path)


def test_debug_shows_the_traceback(in_workspace, capsys):
    with pytest.raises(ValueError, match="--score-thr nan"):
        run_command(load_tool("detect").main, [VAL_IMAGE, "--vocab", "cat", "--config", TINY_CONFIG, "--checkpoint",
                                               "detector.pth", "--score-thr", "nan", "--debug"])


@pytest.mark.parametrize("tool", ["train_det", "test_det", "detect", "dump_class_embeddings"])
def test_without_compiled_mmcv_every_tool_says_to_run_setup_detection(tool, tmp_path):
    """mmcv._ext made unimportable (as before `make setup-detection`): one line, status 2."""
    script = ("import runpy, sys; sys.modules['mmcv._ext'] = None; "
              f"sys.argv = [{tool!r}, 'x']; runpy.run_path({str(REPO / 'tools' / f'{tool}.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: mmcv._ext: cannot be imported (import of mmcv._ext halted; None in sys.modules); run `make "
        "setup-detection` (builds mmcv's compiled ops once per torch version: 10 minutes or more)")


def test_make_demo_does_not_build_mmcv_and_make_test_does():
    def commands(target: str) -> str:
        return subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True).stdout

    assert "install_mmcv.sh" not in commands("demo")
    assert "install_mmcv.sh" in commands("test")


def test_eval_without_benchmarks_is_one_line_pointing_to_list_datasets(tmp_path, capsys):
    looked_for = sum(spec.task == "retrieval" for spec in DATASETS)
    status = run_command(lambda argv: prepare(tmp_path, tasks=("retrieval",)), [])
    err = capsys.readouterr().err
    assert (status, err) == (2, f"error: {tmp_path}: no benchmark found for tasks retrieval ({looked_for} looked for, "
                                "none present); `fgclip eval --list-datasets --data-root DIR` prints the expected layout\n")


def test_eval_allow_outside_root_is_an_option_of_the_run(tmp_path):
    """--allow-outside-root reaches the benchmark readers as EvalOptions.allow_outside_root: the same
    FG-OVD file is refused by default and read with the option, with no setting left behind."""
    outside = tmp_path / "elsewhere" / "scene.png"
    outside.parent.mkdir()
    Image.new("RGB", (64, 48)).save(outside)
    (tmp_path / "data" / "coco").mkdir(parents=True)
    (tmp_path / "data" / "fgovd").mkdir()
    hard = tmp_path / "data" / "fgovd" / "hard.jsonl"
    hard.write_text(json.dumps({"img_path": str(outside), "bbox": [4, 4, 20, 10], "pos_expression": "a black square",
                                "neg_expression": ["a white square"]}) + "\n")
    refused = (f"{hard} line 1: image path '{outside}' is absolute; data paths are relative to their root "
               "(give --allow-outside-root to read it anyway)")
    with pytest.raises(ValueError) as error:
        prepare(tmp_path / "data", datasets=["fgovd"])
    assert str(error.value) == refused
    prepared, _ = prepare(tmp_path / "data", datasets=["fgovd"], options=EvalOptions(allow_outside_root=True))
    assert [item.image for bench in prepared[0].payload for item in bench.items] == [str(outside)]
    with pytest.raises(ValueError) as error:  # the option of one run does not carry over to the next
        prepare(tmp_path / "data", datasets=["fgovd"])
    assert str(error.value) == refused
