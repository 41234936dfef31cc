"""F-ViT as CLIPSelf trains it (wusize/CLIPSelf@1c7fe9c, F-ViT/): the masked cross-entropy, the
"background" text embedding, the head layers, the schedule, and OVR-CNN's split files, each checked
against a hand computation or the reference's own formula."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmdet", reason="detection extra not installed (pip install -e .[detection])")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (tools/install_mmcv.sh)")

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope  # noqa: E402
from torch import nn  # noqa: E402

from detection import (  # noqa: E402  (registers the modules)
    CLIPSELF_TEMPLATES,
    OV_COCO_CLASSES,
    OV_COCO_NOVEL_CLASSES,
    OVCocoAP50Metric,
    OVCocoDataset,
    masked_cross_entropy,
    save_class_embeddings,
)
from detection.class_embeddings import load_class_embeddings, prompts  # noqa: E402
from detection.config_file import load_config  # noqa: E402
from fgclip import FGCLIPModel, FGCLIPProcessor  # noqa: E402
from fgclip.data.shapes import SHAPES  # noqa: E402
from numerics import assert_close_to_reference, tower_terms  # noqa: E402
from tiny_detection import ASSETS, load_tool  # noqa: E402
from mmdet.registry import DATASETS, MODELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "fvit_tiny_cpu.py"
NOVEL = ("star", "cross")


def fc_shapes(layers) -> list[tuple[int, int]]:
    return [(fc.in_features, fc.out_features) for fc in layers]


def write_embeddings(path: Path, names, width: int, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(len(names), width, generator=generator), dim=-1)
    background = F.normalize(torch.randn(width, generator=generator), dim=0)
    save_class_embeddings(path, names, embeddings, ["a photo of a {}."], "random", background=background)
    return path


# ----------------------------------------------------------------------------- 1. the loss
@pytest.mark.numerics
def test_masked_cross_entropy_hand_example():
    """Class weights [1, 0, 1, 0.6] (class 1 novel, background last): class 1 is out of the softmax."""
    logits = torch.tensor([[2.0, 5.0, 0.5, 1.0], [0.3, -1.0, 2.2, 0.1], [1.0, 3.0, 0.0, 2.0], [0.0, 4.0, 1.0, 0.5]],
                          requires_grad=True)
    labels = torch.tensor([0, 2, 3, 1])  # the last target is novel: it contributes 0, not NaN
    weights = torch.tensor([1.0, 0.0, 1.0, 0.6])
    loss = masked_cross_entropy(logits, labels, class_weight=weights, reduction="sum")
    expected = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        if label == 1:
            continue
        kept = [row[k] for k in (0, 2, 3)]
        expected += -weights[label].item() * (row[label] - math.log(sum(math.exp(v) for v in kept)))
    terms, scale = logits.shape[1] + 4, float(logits.detach().abs().sum())  # a log-sum-exp per row, the weighted sum
    assert_close_to_reference(loss, expected, terms=terms, scale=scale)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[:, 1].abs().max() == 0
    mean = masked_cross_entropy(logits, labels, class_weight=weights, avg_factor=4.0)
    assert_close_to_reference(mean, expected / 4, terms=terms, scale=scale / 4)


def batch_loss(model, batch, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # the same RoI sampling every call
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    with torch.no_grad():
        return model.loss(data["inputs"], data["data_samples"])["loss_cls"]


def test_training_loss_ignores_novel_embeddings_and_follows_base_ones(in_workspace):
    """One training batch of the tiny F-ViT: replacing the novel classes' embeddings leaves the
    classification loss bit-identical; replacing a base class's changes it. With mmdet's plain
    class-weighted cross-entropy (the old loss) the novel embeddings did change it."""
    cfg = load_config(str(TINY_CONFIG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[0], dataset[1], dataset[2]])
    head = model.roi_head.bbox_head
    novel = torch.tensor([name in NOVEL for name in SHAPES])
    original = head.class_embeddings.clone()
    loss = batch_loss(model, batch)

    generator = torch.Generator().manual_seed(1)
    replaced = original.clone()
    replaced[novel] = F.normalize(torch.randn(int(novel.sum()), original.shape[1], generator=generator), dim=-1)
    head.class_embeddings = replaced
    assert torch.equal(batch_loss(model, batch), loss)

    base_changed = original.clone()
    base_changed[0] = F.normalize(torch.randn(original.shape[1], generator=generator), dim=0)
    head.class_embeddings = base_changed
    assert not torch.allclose(batch_loss(model, batch), loss)

    plain = MODELS.build(dict(type="CrossEntropyLoss", use_sigmoid=False, class_weight=head.loss_cls.class_weight))
    head.loss_cls = plain
    head.class_embeddings = original
    before = batch_loss(model, batch)
    head.class_embeddings = replaced
    assert not torch.allclose(batch_loss(model, batch), before)


# ----------------------------------------------------------------------------- 2. the background
@pytest.mark.numerics
def test_background_row_is_the_prompt_ensemble_of_background(in_workspace, tmp_path):
    saved = torch.load(f"{ASSETS}/shapes_embeddings.pt", weights_only=True)
    assert saved["templates"] == list(CLIPSELF_TEMPLATES) and len(CLIPSELF_TEMPLATES) == 63
    model = FGCLIPModel.from_pretrained(f"{ASSETS}/fgclip").eval()
    processor = FGCLIPProcessor.from_pretrained(f"{ASSETS}/fgclip")

    def ensemble(texts):
        with torch.no_grad():
            rows = [model.get_text_features(**processor(text=[text], text_kind="short"), normalize=True)[0] for text in texts]
        return F.normalize(torch.stack(rows).mean(0), dim=0)

    background_texts = [t.replace("{article}", "a").replace("{}", "background") for t in CLIPSELF_TEMPLATES]
    assert background_texts[0] == "There is a background in the scene."
    expected = ensemble(background_texts)
    # the tool embeds the prompts in batches; the mean over the templates and the normalisation
    text = model.config.text_config
    terms = tower_terms(text, text.max_position_embeddings) + len(CLIPSELF_TEMPLATES) + 4 * expected.shape[0]
    assert_close_to_reference(saved["background"], expected, terms=terms)
    assert_close_to_reference(saved["embeddings"][SHAPES.index("circle")], ensemble(prompts("circle", CLIPSELF_TEMPLATES)),
                              terms=terms)

    cfg = load_config(str(TINY_CONFIG)).model.roi_head.bbox_head
    head = MODELS.build(cfg)
    assert_close_to_reference(head.class_and_background_embeddings()[-1], expected, terms=terms)
    assert "background_embedding" not in dict(head.named_parameters()) and "background_embedding" not in head.state_dict()
    learned = MODELS.build({**cfg, "learn_bg": True})
    assert isinstance(learned.background_embedding, nn.Parameter) and "background_embedding" in learned.state_dict()
    assert_close_to_reference(learned.class_and_background_embeddings()[-1], expected, terms=terms)
    # The CLIP softmax of the ensemble uses the same background row.
    clip_region = torch.randn(2, expected.shape[0])
    cosine = F.normalize(clip_region, dim=-1) @ torch.cat([head.class_embeddings, expected[None]]).t()
    # a probability is off by about its logit's error (75 x a cosine), plus the softmax's
    assert_close_to_reference(head.clip_probabilities(clip_region), (75.0 * cosine).softmax(-1),
                              terms=3 * expected.shape[0] + 2 * cosine.shape[1] + 2, scale=75.0)

    with pytest.raises(ValueError, match="^--vocab: 'background' is not a class name"):
        load_tool("dump_class_embeddings").main(["--model", f"{ASSETS}/fgclip", "--vocab", "cat,background",
                                                 "--out", str(tmp_path / "x.pt")])
    old = {key: value for key, value in saved.items() if key != "background"}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old\.pt: no field 'background'.*tools/dump_class_embeddings\.py"):
        load_class_embeddings(tmp_path / "old.pt")


def test_prompts_follow_clipself_name_rules():
    texts = prompts("aerosol_can", CLIPSELF_TEMPLATES)
    assert texts[0] == "There is an aerosol can in the scene."
    assert texts[2] == "This is a photo of an aerosol can in the scene."
    assert texts[5] == "itap of an aerosol can."
    assert prompts("bow_(weapon)", ["{}"]) == ["bow (weapon)"]
    assert prompts("Band_Aid", ["a {article} {}."]) == ["a a band aid."]  # CLIPSelf's article looks at the raw name
    assert prompts("tv/monitor.", ["{}"]) == ["tv or monitor"]


# ----------------------------------------------------------------------------- 4. head, neck, RPN
def test_head_layers_and_temperature_as_the_reference(tmp_path):
    init_default_scope("mmdet")
    cfg = Config.fromfile(str(REPO / "configs" / "fvit_fgclip_b16.py"))
    head_cfg = copy.deepcopy(cfg.model.roi_head.bbox_head)
    head_cfg.class_embeddings = str(write_embeddings(tmp_path / "coco.pt", OV_COCO_CLASSES, 512))
    head = MODELS.build(head_cfg).eval()
    assert [type(c).__name__ for c in head.shared_convs] == ["ConvModule"] * 4
    assert all(type(c.norm).__name__ == "SyncBatchNorm" for c in head.shared_convs)
    assert fc_shapes(head.shared_fcs) == [(256 * 7 * 7, 512), (512, 512)]
    assert fc_shapes(head.cls_fcs) == [(512, 512)] and fc_shapes(head.reg_fcs) == [(512, 512)]
    assert (head.fc_reg.in_features, head.fc_reg.out_features) == (512, 4) and not hasattr(head, "fc_cls")
    assert isinstance(head.temperature, nn.Parameter) and head.temperature.shape == () and head.temperature.item() == 50.0
    assert head.loss_cls.class_weight == [0.0 if n in OV_COCO_NOVEL_CLASSES else 1.0 for n in OV_COCO_CLASSES] + [0.6]

    x = torch.randn(3, 256, 7, 7)
    with torch.no_grad():
        head.temperature.fill_(37.0)
        cls_score, bbox_pred = head(x)
        shared = x
        for conv in head.shared_convs:
            shared = conv(shared)
        shared = shared.flatten(1)
        for fc in head.shared_fcs:
            shared = torch.relu(fc(shared))
        region = torch.relu(head.cls_fcs[0](shared))
        reg = torch.relu(head.reg_fcs[0](shared))
    classes = torch.cat([head.class_embeddings, F.normalize(head.background_embedding, dim=0)[None]])
    assert torch.equal(cls_score, 37.0 * F.normalize(region, dim=-1) @ classes.t())  # the head's formula, bit for bit
    assert torch.equal(bbox_pred, head.fc_reg(reg))

    rpn = MODELS.build(cfg.model.rpn_head)
    assert [type(m).__name__ for m in rpn.rpn_conv] == ["ConvModule", "ConvModule"]
    neck = MODELS.build(cfg.model.neck)
    assert all(type(m.norm).__name__ == "SyncBatchNorm" for m in [*neck.lateral_convs, *neck.fpn_convs])
    assert cfg.model.test_cfg.rpn.nms_pre == 2000 and cfg.model.train_cfg.rpn_proposal.nms_pre == 2000
    with pytest.raises(ValueError, match="fc_out_channels=1024 but the embeddings of .*coco.pt are 512 wide"):
        MODELS.build({**head_cfg, "fc_out_channels": 1024})

    large = Config.fromfile(str(REPO / "configs" / "fvit_fgclip_l14.py")).model.roi_head.bbox_head
    large.class_embeddings = str(write_embeddings(tmp_path / "coco_l.pt", OV_COCO_CLASSES, 768))
    assert fc_shapes(MODELS.build(large).cls_fcs) == [(768, 768)]


# ----------------------------------------------------------------------------- 4. schedule
def reference_lr(iteration: int, epoch: int, base_lr: float = 1e-4, steps=(100,)) -> float:
    """mmcv 1.x ``StepLrUpdaterHook`` (by epoch) with ``warmup='linear', warmup_iters=250,
    warmup_ratio=0.001``, as CLIPSelf's configs set it: regular lr = base * 0.1^(steps passed);
    for iteration < 250, lr = regular * (1 - (1 - iteration / 250) * (1 - 0.001))."""
    regular = base_lr * 0.1 ** sum(epoch >= step for step in steps)
    if iteration < 250:
        return regular * (1 - (1 - iteration / 250) * (1 - 0.001))
    return regular


def simulated_lrs(cfg: Config, iters_per_epoch: int) -> list[tuple[int, int, float]]:
    """(iteration, epoch, lr) of every training iteration, stepping schedulers as ParamSchedulerHook does."""
    optim_wrapper = build_optim_wrapper(nn.Linear(2, 2), cfg.optim_wrapper)
    schedulers = [PARAM_SCHEDULERS.build({**s, "optimizer": optim_wrapper}) for s in copy.deepcopy(cfg.param_scheduler)]
    out, iteration = [], 0
    for epoch in range(cfg.train_cfg.max_epochs):
        for _ in range(iters_per_epoch):
            out.append((iteration, epoch, optim_wrapper.get_lr()["lr"][0]))
            for scheduler in schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
            iteration += 1
        for scheduler in schedulers:
            if scheduler.by_epoch:
                scheduler.step()
    return out


@pytest.mark.filterwarnings("ignore:Detected call of `scheduler.step\\(\\)` before")
def test_schedule_learning_rate_equals_the_reference():
    init_default_scope("mmdet")
    cfg = Config.fromfile(str(REPO / "configs" / "fvit_fgclip_b16.py"))
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0, norm_type=2) and cfg.train_cfg.max_epochs == 3
    lrs = simulated_lrs(cfg, iters_per_epoch=1684)  # about 107.7k base-annotated images / 64
    for iteration, epoch, lr in [lrs[0], lrs[125], lrs[249], lrs[250], lrs[-1]]:
        assert lr == pytest.approx(reference_lr(iteration, epoch), rel=1e-9), iteration
    assert lrs[0][2] == pytest.approx(1e-7) and lrs[250][2] == pytest.approx(1e-4) and lrs[-1][2] == pytest.approx(1e-4)
    assert all(lr == pytest.approx(reference_lr(i, e), rel=1e-9) for i, e, lr in lrs[::97])

    lvis = Config.fromfile(str(REPO / "configs" / "fvit_fgclip_b16_ovlvis.py"))
    lvis_lrs = simulated_lrs(lvis, iters_per_epoch=20)
    assert lvis.train_cfg.max_epochs == 48
    for iteration, epoch, lr in lvis_lrs[::7] + [lvis_lrs[250], lvis_lrs[32 * 20], lvis_lrs[44 * 20], lvis_lrs[-1]]:
        assert lr == pytest.approx(reference_lr(iteration, epoch, steps=(32, 44)), rel=1e-9), iteration


def test_amp_uses_the_reference_static_loss_scale(monkeypatch):
    train_det = load_tool("train_det")
    monkeypatch.setattr(train_det, "get_device", lambda: "cuda")  # fp16 --amp needs a GPU; none is used here
    cfg = train_det.setup_config(train_det.parse_args([str(REPO / "configs" / "fvit_fgclip_b16.py"), "--amp"]))
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == 512.0
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0, norm_type=2)
    plain = train_det.setup_config(train_det.parse_args([str(REPO / "configs" / "fvit_fgclip_b16.py")]))
    assert plain.optim_wrapper.type == "OptimWrapper"


# ----------------------------------------------------------------------------- 5. OVR-CNN split files
def ovrcnn_split(coco: dict, seen: set[str], keep_categories: str) -> dict:
    """A COCO dict filtered as OVR-CNN's notebook 003 writes its split files: categories get
    ``split`` and ``embedding`` fields, annotations and images are kept for the ``seen`` classes
    only (or all, for ``keep_categories="all"`` with every annotation)."""
    out = copy.deepcopy(coco)
    for category in out["categories"]:
        category["split"] = "seen" if category["name"] in seen else "unseen"
        category["embedding"] = {"GloVE": [0.1] * 4, "BertEmb": [0.2] * 4}
    seen_ids = {c["id"] for c in out["categories"] if c["split"] == "seen"}
    if keep_categories == "seen":
        out["categories"] = [c for c in out["categories"] if c["id"] in seen_ids]
    if keep_categories in ("seen", "seen_all_categories"):
        out["annotations"] = [a for a in out["annotations"] if a["category_id"] in seen_ids]
    used = {a["image_id"] for a in out["annotations"]}
    out["images"] = [image for image in out["images"] if image["id"] in used]
    return out


def test_ovrcnn_split_files_load_as_distributed(in_workspace, tmp_path):
    shapes = in_workspace / ASSETS / "shapes"
    train = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    val = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    seen = {name for name in SHAPES if name not in NOVEL}
    files = {
        "instances_train2017_seen_2.json": ovrcnn_split(train, seen, "seen"),
        "instances_train2017_seen_2_65_cat.json": ovrcnn_split(train, seen, "seen_all_categories"),
        "instances_val2017_all_2.json": ovrcnn_split(val, seen, "all"),
    }
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert len(files["instances_train2017_seen_2.json"]["categories"]) == len(seen)

    classes = tuple(reversed(SHAPES))
    common = dict(metainfo=dict(classes=classes), novel_classes=NOVEL, pipeline=[])

    def labels(dataset):
        infos = [dataset.get_data_info(i) for i in range(len(dataset))]
        return {info["img_id"]: sorted(i["bbox_label"] for i in info["instances"]) for info in infos}

    filtered = OVCocoDataset(ann_file=str(shapes / "annotations" / "instances_train.json"), base_only=True,
                             filter_cfg=dict(filter_empty_gt=True), data_prefix=dict(img=str(shapes / "train")), **common)
    expected = labels(filtered)
    assert expected and not any(classes.index(n) in v for v in expected.values() for n in NOVEL)
    for name in ("instances_train2017_seen_2.json", "instances_train2017_seen_2_65_cat.json"):
        dataset = OVCocoDataset(ann_file=str(tmp_path / name), base_only=True, filter_cfg=dict(filter_empty_gt=True),
                                data_prefix=dict(img=str(shapes / "train")), **common)
        assert labels(dataset) == expected, name
    with pytest.raises(ValueError, match="instances_train2017_seen_2.json.*no category named \\['cross', 'star'\\]"):
        OVCocoDataset(ann_file=str(tmp_path / "instances_train2017_seen_2.json"), **common)

    val_file = str(tmp_path / "instances_val2017_all_2.json")
    val_set = OVCocoDataset(ann_file=val_file, test_mode=True, data_prefix=dict(img=str(shapes / "val")), **common)
    truth = labels(val_set)
    assert any(classes.index(n) in v for v in truth.values() for n in NOVEL)
    metric = OVCocoAP50Metric(ann_file=val_file, novel_classes=NOVEL)
    metric.dataset_meta = {"classes": classes}
    for index in range(len(val_set)):
        info = val_set.get_data_info(index)
        boxes = torch.tensor([i["bbox"] for i in info["instances"]], dtype=torch.float32).reshape(-1, 4)
        metric.process({}, [{"img_id": info["img_id"], "pred_instances": {
            "bboxes": boxes, "scores": torch.ones(len(boxes)),
            "labels": torch.tensor([i["bbox_label"] for i in info["instances"]], dtype=torch.long)}}])
    result = metric.evaluate(size=len(val_set))
    assert result == {"ov_coco/AP50_novel": 100.0, "ov_coco/AP50_base": 100.0, "ov_coco/AP50_all": 100.0}
    assert not np.isnan(list(result.values())).any()
