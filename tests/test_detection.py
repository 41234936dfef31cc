"""Open-vocabulary detection (detection/): F-ViT on a frozen tiny FG-CLIP, checked end to end on
synthetic shape scenes ("star" and "cross" held out as novel) and piece by piece against hand
computations and direct pycocotools runs."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("mmdet", reason="detection extra not installed (pip install -e .[detection])")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (tools/install_mmcv.sh)")

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from detection import OVCocoAP50Metric, OVCocoDataset, ensemble_scores  # noqa: E402  (registers the modules)
from detection.config_file import load_config  # noqa: E402
from fgclip import FGCLIPModel, FGCLIPProcessor  # noqa: E402
from fgclip.data.shapes import SHAPES  # noqa: E402
from fgclip.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from numerics import assert_close_to_reference, tower_terms  # noqa: E402
from tiny_detection import ASSETS, load_tool  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "fvit_tiny_cpu.py"
NOVEL = ("star", "cross")


def tiny_cfg() -> Config:
    return load_config(str(TINY_CONFIG))


# ----------------------------------------------------------------------------- head math
def test_ensemble_scores_hand_example():
    det = torch.tensor([[0.5, 0.3, 0.2]])
    clip = torch.tensor([[0.2, 0.6, 0.2]])
    is_novel = torch.tensor([False, True, False])  # class 0 base, class 1 novel, background
    got = ensemble_scores(det, clip, is_novel, alpha=0.1, beta=0.8)
    expected = [0.5**0.9 * 0.2**0.1, 0.3**0.2 * 0.6**0.8, 0.2**0.9 * 0.2**0.1]
    assert got[0].tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.numerics
def test_bbox_head_logits_ensemble_and_class_weights(in_workspace):
    head = MODELS.build(tiny_cfg().model.roi_head.bbox_head).eval()
    names, embeds = head.class_names, head.class_embeddings
    assert names == list(SHAPES) and head.temperature.item() == pytest.approx(50.0)
    assert head.loss_cls.class_weight == [0.0 if n in NOVEL else 1.0 for n in SHAPES] + [0.6]

    torch.manual_seed(1)
    rois = torch.tensor([[0, 4.0, 4.0, 30.0, 40.0], [0, 10.0, 2.0, 60.0, 20.0], [0, 0.0, 0.0, 64.0, 64.0]])
    feats = torch.randn(3, 32, 7, 7)
    with torch.no_grad():
        cls_score, bbox_pred = head(feats)
        regions = head.region_embeddings(feats)
    background = head.background_embedding.detach()
    classes = [e.tolist() for e in embeds] + [(background / background.norm()).tolist()]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    def as_reference(values):  # a float64 hand computation
        return torch.tensor(values, dtype=torch.float64)

    cosine_terms = 3 * embeds.shape[1] + 2  # two norms and a dot product, the temperature
    for i in range(3):  # logits = 50 * cos(region, class), background last
        expected = [50.0 * cosine(regions[i].tolist(), c) for c in classes]
        assert_close_to_reference(cls_score[i], as_reference(expected), terms=cosine_terms)

    clip_embeds = torch.randn(3, embeds.shape[1])
    with torch.no_grad():
        (decoded,) = head.predict_by_feat((rois,), (cls_score,), (bbox_pred,), [{"img_shape": (64, 64)}],
                                          rcnn_test_cfg=None, clip_region_embeds=(clip_embeds,))
    for i in range(3):
        det_exp = [math.exp(v) for v in cls_score[i].tolist()]
        clip_exp = [math.exp(75.0 * cosine(clip_embeds[i].tolist(), c)) for c in classes]
        for k, name in enumerate(list(SHAPES) + ["background"]):
            w = 0.8 if name in NOVEL else 0.1
            p_det, p_clip = det_exp[k] / sum(det_exp), clip_exp[k] / sum(clip_exp)
            # a probability is off by about its logits' error: the CLIP logits' (75 x cosine) and a softmax
            assert_close_to_reference(decoded.scores[i, k], as_reference(p_det ** (1 - w) * p_clip**w),
                                      terms=cosine_terms + 2 * len(classes), scale=75.0)

    # Training loss: cross-entropy over the base classes and the background (novel logits -inf),
    # weighted 1 (base) / 0 (novel) / 0.6 (background).
    labels = torch.tensor([0, SHAPES.index("star"), len(SHAPES)])
    weights = [1.0, 0.0, 0.6]
    losses = head.loss(cls_score, bbox_pred, rois, labels, torch.ones(3), torch.zeros(3, 4), torch.zeros(3, 4))
    trained = [k for k, name in enumerate(list(SHAPES) + ["background"]) if name not in NOVEL]
    ce = [math.log(sum(math.exp(cls_score[i, k].item()) for k in trained)) - cls_score[i, labels[i]].item()
          if int(labels[i]) in trained else 0.0 for i in range(3)]
    assert_close_to_reference(losses["loss_cls"], as_reference(sum(w * c for w, c in zip(weights, ce)) / 3),
                              terms=2 * len(classes) + 6, scale=float(cls_score.abs().max()))

    # A user vocabulary replaces the classes: logits against the new embeddings, new novel mask.
    vocabulary = torch.randn(2, embeds.shape[1])
    head.set_vocabulary(["red cup", "cat"], vocabulary, novel_classes=["cat"])
    assert head.is_novel.tolist() == [False, True, False] and head.loss_cls.class_weight == [1.0, 0.0, 0.6]
    with torch.no_grad():
        new_score, _ = head(feats)
    for i in range(3):
        expected = [50.0 * cosine(regions[i].tolist(), c) for c in [v.tolist() for v in vocabulary] + classes[-1:]]
        assert_close_to_reference(new_score[i], as_reference(expected), terms=cosine_terms)


# ----------------------------------------------------------------------------- backbone
@pytest.mark.numerics
def test_backbone_frozen_pyramid_and_clip_map(in_workspace):
    cfg = tiny_cfg()
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    reference = FGCLIPModel.from_pretrained(f"{ASSETS}/fgclip").eval()
    for (name, p), q in zip(backbone.clip.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name  # init_weights leaves FG-CLIP alone
    backbone.train()
    assert not backbone.clip.training and backbone.pyramid.training
    assert all(not p.requires_grad for p in backbone.clip.parameters())

    pixels = torch.randn(2, 3, 48, 64)  # not the 32-px training size: interpolated positions
    pyramid, clip_map = backbone.forward_with_clip_map(pixels)
    assert [tuple(m.shape) for m in pyramid] == [(2, 32, 24, 32), (2, 32, 12, 16), (2, 32, 6, 8), (2, 32, 3, 4)]
    assert all(m.is_contiguous() for m in pyramid)  # mmcv's CPU RoIAlign misreads other strides
    expected = reference.get_dense_features(pixels, normalize=True).permute(0, 3, 1, 2)
    terms = tower_terms(reference.config.vision_config, 1 + 6 * 8)  # the backbone runs the tower its own way
    assert_close_to_reference(clip_map, expected, terms=terms)
    # level 2 is the output of block out_indices[2] = 2 (identity branch), CLS dropped
    hidden = reference.vision_model(pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
    assert_close_to_reference(pyramid[2], hidden[3][:, 1:].transpose(1, 2).reshape(2, 32, 6, 8), terms=terms)
    # level 3 (2x2 max pooling) is fed by the last block run as CLIPSelf's value path, by hand:
    # x + out_proj(v_proj(ln1(x))), then x + mlp(ln2(x)), on the tokens entering the last block
    block = reference.vision_model.encoder.layers[-1]
    x = hidden[-2]
    with torch.no_grad():
        x = x + block.self_attn.out_proj(block.self_attn.v_proj(block.layer_norm1(x)))
        x = x + block.mlp.fc2(block.mlp.activation_fn(block.mlp.fc1(block.layer_norm2(x))))
    top = F.max_pool2d(x[:, 1:].transpose(1, 2).reshape(2, 32, 6, 8), 2)
    assert len(reference.vision_model.encoder.layers) - 1 == cfg.model.backbone.out_indices[-1]
    assert_close_to_reference(pyramid[3], top, terms=terms)
    with pytest.raises(ValueError, match="divisible by the patch size 8"):
        backbone(torch.randn(1, 3, 60, 64))


# ----------------------------------------------------------------------------- data and metric
def test_dataset_label_order_and_base_only(in_workspace):
    ann_file = f"{ASSETS}/shapes/annotations/instances_train.json"
    classes = tuple(reversed(SHAPES))  # not the file's category order
    common = dict(ann_file=ann_file, data_prefix=dict(img=f"{ASSETS}/shapes/train/"), metainfo=dict(classes=classes),
                  novel_classes=NOVEL, pipeline=[])
    full = OVCocoDataset(**common)
    base = OVCocoDataset(**common, base_only=True, filter_cfg=dict(filter_empty_gt=True))
    raw = json.loads(Path(ann_file).read_text())
    name_of = {c["id"]: c["name"] for c in raw["categories"]}
    expected = {}
    for ann in raw["annotations"]:
        expected.setdefault(ann["image_id"], []).append(classes.index(name_of[ann["category_id"]]))

    def labels_by_image(dataset):
        infos = [dataset.get_data_info(i) for i in range(len(dataset))]
        return {info["img_id"]: [instance["bbox_label"] for instance in info["instances"]] for info in infos}

    assert labels_by_image(full) == expected
    novel_labels = {classes.index(n) for n in NOVEL}
    kept = {img: [label for label in labels if label not in novel_labels] for img, labels in expected.items()}
    assert labels_by_image(base) == {img: labels for img, labels in kept.items() if labels}
    with pytest.raises(ValueError, match="instances_train.json.*'categories' has no category named \\['dog'\\]"):
        OVCocoDataset(**{**common, "metainfo": dict(classes=("circle", "dog")), "novel_classes": ()})


def test_metric_matches_pycocotools_on_planted_detections(in_workspace, tmp_path):
    ann_file = f"{ASSETS}/shapes/annotations/instances_val.json"
    gt = json.loads(Path(ann_file).read_text())
    rng = np.random.default_rng(0)
    planted = []  # COCO results: jittered true boxes (some mislabelled) plus random false positives
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        category = ann["category_id"] if rng.random() < 0.7 else int(rng.integers(1, len(SHAPES) + 1))
        box = [x + rng.normal(0, 0.15 * w), y + rng.normal(0, 0.15 * h), w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)]
        planted.append({"image_id": ann["image_id"], "category_id": category, "bbox": box, "score": float(rng.random())})
    for image in gt["images"]:
        for _ in range(3):
            x, y = rng.uniform(0, 40, size=2)
            planted.append({"image_id": image["id"], "category_id": int(rng.integers(1, len(SHAPES) + 1)),
                            "bbox": [float(x), float(y), 20.0, 20.0], "score": float(rng.random() * 0.5)})
    (tmp_path / "planted.json").write_text(json.dumps(planted))

    # Reference: one COCOeval per category at IoU 0.5 alone, read from summarize()'s stats.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        coco_dt = coco_gt.loadRes(str(tmp_path / "planted.json"))
        reference = {}
        for cat in gt["categories"]:
            if not coco_gt.getAnnIds(catIds=[cat["id"]]):
                continue
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            evaluator.params.catIds = [cat["id"]]
            evaluator.params.iouThrs = np.array([0.5])
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            reference[cat["name"]] = 100 * evaluator.stats[0]
    assert len(reference) >= 4 and any(n in reference for n in NOVEL)

    classes = tuple(reversed(SHAPES))
    metric = OVCocoAP50Metric(ann_file=ann_file, novel_classes=NOVEL)
    metric.dataset_meta = {"classes": classes}
    name_of = {c["id"]: c["name"] for c in gt["categories"]}
    for image in gt["images"]:
        dets = [d for d in planted if d["image_id"] == image["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]).reshape(-1, 4)
        sample = {"img_id": image["id"], "pred_instances": {
            "bboxes": boxes, "scores": torch.tensor([d["score"] for d in dets]),
            "labels": torch.tensor([classes.index(name_of[d["category_id"]]) for d in dets], dtype=torch.long)}}
        metric.process({}, [sample])
    got = metric.evaluate(size=len(gt["images"]))

    def mean(names):
        values = [reference[n] for n in names if n in reference]
        return sum(values) / len(values)

    assert got["ov_coco/AP50_novel"] == pytest.approx(mean(NOVEL), abs=1e-6)
    assert got["ov_coco/AP50_base"] == pytest.approx(mean([n for n in SHAPES if n not in NOVEL]), abs=1e-6)
    assert got["ov_coco/AP50_all"] == pytest.approx(mean(SHAPES), abs=1e-6)


# ----------------------------------------------------------------------------- embeddings and config errors
@pytest.mark.numerics
def test_dumped_class_embeddings_equal_text_tower(in_workspace, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\nthere is a {} in the scene.\n")
    out = tmp_path / "vocab.pt"
    load_tool("dump_class_embeddings").main(
        ["--model", f"{ASSETS}/fgclip", "--vocab", "red cup,cat", "--templates-file", str(templates), "--out", str(out)]
    )
    saved = torch.load(out, weights_only=True)
    assert saved["class_names"] == ["red cup", "cat"] and len(saved["templates"]) == 2
    model = FGCLIPModel.from_pretrained(f"{ASSETS}/fgclip").eval()
    processor = FGCLIPProcessor.from_pretrained(f"{ASSETS}/fgclip")
    for row, name in enumerate(["red cup", "cat"]):
        with torch.no_grad():
            per_template = [model.get_text_features(**processor(text=t.format(name), text_kind="short"),
                                                    normalize=True)[0]
                            for t in ("a photo of a {}.", "there is a {} in the scene.")]
        expected = F.normalize(torch.stack(per_template).mean(0), dim=0)
        # the tool embeds the prompts as one batch; the mean of 2 and the normalisation
        terms = tower_terms(model.config.text_config, model.config.text_config.max_position_embeddings) + 4 * len(expected)
        assert_close_to_reference(saved["embeddings"][row], expected, terms=terms)


def test_missing_checkpoint_or_embeddings_fail_clearly(in_workspace):
    cfg = tiny_cfg()
    cfg.model.backbone.checkpoint = "/nonexistent/fg-clip-base"
    with pytest.raises(CheckpointError, match="^/nonexistent/fg-clip-base: .*set by model.backbone.checkpoint"):
        MODELS.build(cfg.model)
    cfg = tiny_cfg()
    cfg.model.roi_head.bbox_head.class_embeddings = "/nonexistent/ov_coco.pt"
    with pytest.raises(DataError, match="^/nonexistent/ov_coco.pt: class-embedding file not found "
                       r"\(set by model.roi_head.bbox_head.class_embeddings\)"):
        MODELS.build(cfg.model)
    cfg = tiny_cfg()
    cfg.model.roi_head.bbox_head.class_names = ("circle", "square")
    with pytest.raises(ConfigError, match="model.roi_head.bbox_head.class_names .* differ from the class_names"):
        MODELS.build(cfg.model)


# ----------------------------------------------------------------------------- end to end
def test_train_test_resume_and_detect_through_runner(in_workspace):
    """20 training iterations and a test run through mmengine's Runner on the CPU; the test again under
    torchrun; resume; tools/detect.py with a custom vocabulary."""
    train_det, test_det = load_tool("train_det"), load_tool("test_det")
    runner = Runner.from_cfg(train_det.setup_config(train_det.parse_args([str(TINY_CONFIG), "--work-dir", "work_dirs/run"])))
    model = runner.train()
    reference = FGCLIPModel.from_pretrained(f"{ASSETS}/fgclip").state_dict()
    clip = model.backbone.clip
    for name, value in clip.state_dict().items():
        assert torch.equal(value, reference[name]), f"frozen weight {name} changed"
    optimizer_state = runner.optim_wrapper.optimizer.state
    assert all(not p.requires_grad and p.grad is None and p not in optimizer_state for p in clip.parameters())
    assert all(p in optimizer_state for p in model.backbone.pyramid.parameters())  # the pyramid did train

    checkpoint = Path("work_dirs/run/iter_20.pth")
    assert torch.load(checkpoint, map_location="cpu")["meta"]["iter"] == 20  # weights-only load (torch default)
    metrics = test_det.main([str(TINY_CONFIG), str(checkpoint), "--work-dir", "work_dirs/test", "--out", "work_dirs/m.json"])
    for key in ("ov_coco/AP50_novel", "ov_coco/AP50_base", "ov_coco/AP50_all"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 100.0
    assert json.loads(Path("work_dirs/m.json").read_text()) == metrics

    # The same evaluation under torchrun: 2 CPU processes (gloo), 3 images each.
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         str(REPO / "tools" / "test_det.py"), str(TINY_CONFIG), str(checkpoint), "--work-dir", "work_dirs/test2",
         "--out", "work_dirs/m2.json"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(Path("work_dirs/m2.json").read_text()) == pytest.approx(metrics)

    resumed = Runner.from_cfg(train_det.setup_config(train_det.parse_args(
        [str(TINY_CONFIG), "--work-dir", "work_dirs/run", "--resume", "--cfg-options", "train_cfg.max_iters=22"])))
    resumed.train()
    assert resumed.iter == 22
    assert len(resumed.message_hub.get_scalar("train/loss").data[0]) > 2  # history restored from the checkpoint

    out = load_tool("detect").main(["work_dirs/tiny_cpu/shapes/val/000000.png", "--vocab", "circle,blue star,cup",
                                    "--config", str(TINY_CONFIG), "--checkpoint", str(checkpoint),
                                    "--score-thr", "0.0", "--out", "work_dirs/det.png"])
    assert Image.open(out).size == (64, 64)


# ----------------------------------------------------------------------------- FG-CLIP 2 backbone
@pytest.fixture(scope="module")
def fgclip2_assets(workspace) -> Path:
    """A tiny FG-CLIP 2 (4 blocks, patch 8) with a word-level tokenizer, and its shape-class embeddings."""
    from fgclip import FGCLIP2Model, FGCLIP2Processor
    from fgclip.testing import tiny_fgclip2_config, tiny_word_tokenizer

    assets = workspace / ASSETS
    tokenizer = tiny_word_tokenizer([*SHAPES, "a", "photo", "of", "the", "red", "cup", "cat"])
    torch.manual_seed(0)
    model = FGCLIP2Model(tiny_fgclip2_config(num_layers=4, patch_size=8, vocab_size=len(tokenizer))).eval()
    model.save_pretrained(assets / "fgclip2")
    FGCLIP2Processor.for_config(model.config, tokenizer).save_pretrained(assets / "fgclip2")
    load_tool("dump_class_embeddings").main(["--model", str(assets / "fgclip2"), "--vocab", ",".join(SHAPES),
                                             "--out", str(assets / "shapes_embeddings_fgclip2.pt")])
    return assets


def fgclip2_cfg() -> Config:
    """The tiny CPU config on the FG-CLIP 2 backbone, as configs/fvit_fgclip2_base.py changes the ViT-B one."""
    cfg = tiny_cfg()
    base = Config.fromfile(str(REPO / "configs" / "fvit_fgclip2_base.py")).model
    cfg.model.data_preprocessor.mean, cfg.model.data_preprocessor.std = base.data_preprocessor.mean, base.data_preprocessor.std
    cfg.model.backbone.type = base.backbone.type
    cfg.model.backbone.checkpoint = f"{ASSETS}/fgclip2"
    cfg.model.roi_head.bbox_head.class_embeddings = f"{ASSETS}/shapes_embeddings_fgclip2.pt"
    return cfg


@pytest.mark.numerics
def test_fgclip2_backbone_maps_and_clip_map(fgclip2_assets, in_workspace):
    from fgclip import FGCLIP2Model, FGCLIP2Processor

    backbone = MODELS.build(fgclip2_cfg().model.backbone)
    backbone.init_weights()
    backbone.train()
    assert not backbone.clip.training and all(not p.requires_grad for p in backbone.clip.parameters())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    pixels = (torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None] - 127.5) / 127.5
    pyramid, clip_map = backbone.forward_with_clip_map(pixels)
    assert [tuple(m.shape) for m in pyramid] == [(1, 32, 24, 32), (1, 32, 12, 16), (1, 32, 6, 8), (1, 32, 3, 4)]
    reference = FGCLIP2Model.from_pretrained(f"{ASSETS}/fgclip2").eval()
    batch = FGCLIP2Processor.from_pretrained(f"{ASSETS}/fgclip2")(images=image, max_num_patches=6 * 8)
    assert batch["spatial_shapes"].tolist() == [[6, 8]]  # no resize: the same patches as the backbone's
    with torch.no_grad():
        dense = reference.encode_image(**batch, normalize=True).dense_features
        hidden = reference.vision_model(**batch, output_hidden_states=True).hidden_states
    terms = tower_terms(reference.config.vision_config, 6 * 8)
    assert_close_to_reference(clip_map, dense.transpose(1, 2).reshape(1, 32, 6, 8), terms=terms)
    assert_close_to_reference(pyramid[2], hidden[3].transpose(1, 2).reshape(1, 32, 6, 8), terms=terms)


@pytest.mark.numerics
def test_fgclip2_class_embeddings_use_the_region_text_head(fgclip2_assets, in_workspace):
    from fgclip import FGCLIP2Model, FGCLIP2Processor
    from detection import PROMPT_TEMPLATES
    from detection.class_embeddings import prompts

    saved = torch.load(f"{ASSETS}/shapes_embeddings_fgclip2.pt", weights_only=True)
    model = FGCLIP2Model.from_pretrained(f"{ASSETS}/fgclip2").eval()
    processor = FGCLIP2Processor.from_pretrained(f"{ASSETS}/fgclip2")
    with torch.no_grad():
        per_template = torch.stack([model.get_text_features(**processor(text=text, text_kind="region"),
                                                            normalize=True)[0]
                                    for text in prompts(SHAPES[1], PROMPT_TEMPLATES)])
    text = model.config.text_config
    terms = tower_terms(text, text.max_position_embeddings) + len(per_template) + 2 * per_template.shape[1]
    assert_close_to_reference(saved["embeddings"][1], F.normalize(per_template.mean(0), dim=0), terms=terms)


def test_fgclip2_fvit_trains_and_tests_through_runner(fgclip2_assets, in_workspace):
    cfg = fgclip2_cfg()
    cfg.work_dir = "work_dirs/run_fgclip2"
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 4
    cfg.default_hooks.checkpoint.interval = 4
    runner = Runner.from_cfg(cfg)
    model = runner.train()
    assert all(p not in runner.optim_wrapper.optimizer.state for p in model.backbone.clip.parameters())
    metrics = runner.test()
    assert all(math.isfinite(metrics[f"ov_coco/AP50_{kind}"]) for kind in ("novel", "base", "all"))
