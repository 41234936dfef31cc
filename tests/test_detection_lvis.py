"""OV-LVIS (detection/lvis.py): the federated box metric against the `lvis` package's own evaluator
on planted detections, the dataset on LVIS-style files, and the tiny CPU F-ViT on a rare / common /
frequent split of the shape scenes through mmengine's Runner."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet", reason="detection extra not installed (pip install -e .[detection])")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (tools/install_mmcv.sh)")

from mmengine.runner import Runner  # noqa: E402

from detection import OVLVISDataset, OVLVISMetric, lvis_box_ap, write_lvis_style  # noqa: E402
from detection.config_file import load_config  # noqa: E402
from fgclip.data.shapes import SHAPES, write_coco_detection  # noqa: E402
from tiny_detection import ASSETS, load_tool, save_tiny_fgclip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LVIS_CONFIG = REPO / "configs" / "fvit_tiny_cpu_lvis.py"
FREQUENCIES = load_config(str(LVIS_CONFIG)).frequencies


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Tiny FG-CLIP, shape scenes in COCO and LVIS format, class embeddings: what the tiny LVIS config reads."""
    root = tmp_path_factory.mktemp("detection_lvis")
    assets = root / ASSETS
    save_tiny_fgclip(assets / "fgclip")
    for split, count, seed in (("train", 10, 0), ("val", 12, 1)):
        coco = write_coco_detection(assets / "shapes", split, num_images=count, seed=seed, image_size=64)
        write_lvis_style(coco, assets / "shapes" / "annotations" / f"lvis_{split}.json", FREQUENCIES)
    load_tool("dump_class_embeddings").main(["--model", str(assets / "fgclip"), "--vocab", ",".join(SHAPES), "--templates", "fgclip",
               "--out", str(assets / "shapes_embeddings.pt")])
    return root


def planted_detections(gt: dict, seed: int) -> list[dict]:
    """Jittered true boxes (some mislabelled, some duplicated), random false positives of every
    category (some outside the image's positive / negative sets), random scores."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    planted = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(1 + int(rng.random() < 0.3)):
            category = ann["category_id"] if rng.random() < 0.75 else int(rng.choice(cat_ids))
            box = [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
            planted.append({"image_id": ann["image_id"], "category_id": category, "bbox": [float(v) for v in box],
                            "score": float(rng.random())})
    for image in gt["images"]:
        for _ in range(4):
            x, y = rng.uniform(0, 40, size=2)
            side = float(rng.uniform(6, 40))
            planted.append({"image_id": image["id"], "category_id": int(rng.choice(cat_ids)),
                            "bbox": [float(x), float(y), side, side], "score": float(rng.random() * 0.6)})
    return planted


def lvis_reference(ann_file: Path, detections: list[dict], monkeypatch) -> dict:
    """The `lvis` package's LVISEval (bbox) on ``detections``; numpy 2 lacks the ``np.float`` it uses."""
    lvis = pytest.importorskip("lvis")
    monkeypatch.setattr(np, "float", float, raising=False)
    evaluator = lvis.LVISEval(lvis.LVIS(str(ann_file)), lvis.LVISResults(lvis.LVIS(str(ann_file)), copy.deepcopy(detections)),
                              "bbox")
    evaluator.run()
    return dict(evaluator.get_results())


def test_lvis_box_ap_matches_the_lvis_package(in_workspace, monkeypatch):
    ann_file = in_workspace / ASSETS / "shapes" / "annotations" / "lvis_val.json"
    gt = json.loads(ann_file.read_text())
    assert {c["frequency"] for c in gt["categories"]} == {"r", "c", "f"}
    assert any(image["not_exhaustive_category_ids"] for image in gt["images"])
    for seed in (0, 1):
        detections = planted_detections(gt, seed)
        reference = lvis_reference(ann_file, detections, monkeypatch)
        ours = lvis_box_ap(gt, detections)
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
            assert ours[key] == pytest.approx(float(reference[key]), abs=1e-12), (seed, key)
        assert 0 < ours["APr"] < 1 and 0 < ours["APc"] < 1 and 0 < ours["APf"] < 1


def test_metric_maps_labels_by_name_and_reports_percent(in_workspace, monkeypatch):
    """OVLVISMetric on the planted detections as a model would give them (xyxy boxes, labels in
    the dataset's class order) equals LVISEval x 100."""
    ann_file = in_workspace / ASSETS / "shapes" / "annotations" / "lvis_val.json"
    gt = json.loads(ann_file.read_text())
    detections = planted_detections(gt, 2)
    reference = lvis_reference(ann_file, detections, monkeypatch)
    classes = tuple(reversed(SHAPES))
    name_of = {c["id"]: c["name"] for c in gt["categories"]}
    metric = OVLVISMetric(ann_file=str(ann_file))
    metric.dataset_meta = {"classes": classes}
    for image in gt["images"]:
        dets = [d for d in detections if d["image_id"] == image["id"]]
        metric.process({}, [{"img_id": image["id"], "pred_instances": {
            "bboxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=torch.float64),
            "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float64),
            "labels": torch.tensor([classes.index(name_of[d["category_id"]]) for d in dets])}}])
    got = metric.evaluate(size=len(gt["images"]))
    for key in ("AP", "APr", "APc", "APf"):
        assert got[f"ov_lvis/{key}"] == pytest.approx(100 * float(reference[key]), abs=1e-4), key
    assert math.isnan(got["ov_lvis/APl"]) and float(reference["APl"]) == -1  # no large object in 64 px scenes


def test_lvis_json_errors_name_the_record(in_workspace, tmp_path):
    gt = json.loads((in_workspace / ASSETS / "shapes" / "annotations" / "lvis_val.json").read_text())
    broken = copy.deepcopy(gt)
    broken["categories"][2]["frequency"] = "rare"
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    metric = OVLVISMetric(ann_file=str(tmp_path / "bad.json"))
    metric.dataset_meta = {"classes": SHAPES}
    with pytest.raises(ValueError, match="bad.json: category 3 \\('triangle'\\): field 'frequency'"):
        metric.compute_metrics([])


def test_dataset_reads_lvis_files_by_coco_url(in_workspace, tmp_path):
    shapes = in_workspace / ASSETS / "shapes"
    gt = json.loads((shapes / "annotations" / "lvis_train.json").read_text())
    for image in gt["images"]:
        image["coco_url"] = f"http://images.example.org/train/{image.pop('file_name')}"
    (tmp_path / "lvis_url.json").write_text(json.dumps(gt))
    rare = tuple(name for name, f in FREQUENCIES.items() if f == "r")
    dataset = OVLVISDataset(ann_file=str(tmp_path / "lvis_url.json"), data_prefix=dict(img=str(shapes)),
                            metainfo=dict(classes=SHAPES), novel_classes=rare, base_only=True,
                            filter_cfg=dict(filter_empty_gt=True), pipeline=[])
    info = dataset.get_data_info(0)
    assert Path(info["img_path"]) == shapes / "train" / "000000.png" and Path(info["img_path"]).is_file()
    labels = {i["bbox_label"] for k in range(len(dataset)) for i in dataset.get_data_info(k)["instances"]}
    assert labels and not labels & {SHAPES.index(n) for n in rare}
    with pytest.raises(ValueError, match="set metainfo=dict\\(classes=...\\)"):
        OVLVISDataset(ann_file=str(tmp_path / "lvis_url.json"), pipeline=[])


def test_tiny_lvis_fvit_trains_and_tests_through_runner(in_workspace):
    cfg = load_config(str(LVIS_CONFIG))
    cfg.work_dir = "work_dirs/run_lvis"
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 4
    cfg.default_hooks.checkpoint.interval = 4
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    for key in ("AP", "APr", "APc", "APf"):
        assert 0.0 <= metrics[f"ov_lvis/{key}"] <= 100.0, key
