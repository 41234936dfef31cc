"""The shipped detection configs (configs/fvit_*.py) as the tools load them (detection's load_config:
mmengine's resolution, then the pipelines sized by the config's image_size): the pipelines at each
config's input size, the OV-COCO classes from detection's one list, every field unchanged (a digest
of the loaded config)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("mmdet", reason="detection extra not installed (pip install -e .[detection])")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (tools/install_mmcv.sh)")

from detection.config_file import load_config  # noqa: E402
from detection.datasets import OV_COCO_CLASSES, OV_COCO_NOVEL_CLASSES  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
# config -> (input size, training jitter range)
SIZES = {
    "fvit_fgclip2_base.py": ((640, 640), (0.1, 2.0)),
    "fvit_fgclip_b16.py": ((640, 640), (0.1, 2.0)),
    "fvit_fgclip_b16_ovlvis.py": ((1024, 1024), (0.1, 2.0)),
    "fvit_fgclip_l14.py": ((896, 896), (0.1, 2.0)),
    "fvit_fgclip_l14_ovlvis.py": ((896, 896), (0.1, 2.0)),
    "fvit_tiny_cpu.py": ((64, 64), (0.8, 1.25)),
    "fvit_tiny_cpu_lvis.py": ((64, 64), (0.8, 1.25)),
}
# sha256 (first 16 hex digits) of canonical() of each loaded config, as it stood when the OV-COCO
# classes were still spelt out in configs/_base_/datasets/ov_coco.py, plus the ExactResumeHook in
# default_runtime.py's custom_hooks (the only change since).
DIGESTS = {
    "fvit_fgclip2_base.py": "ef2cb8617c728b65",
    "fvit_fgclip_b16.py": "9f31524ef686884b",
    "fvit_fgclip_b16_ovlvis.py": "a354553f69b61f6d",
    "fvit_fgclip_l14.py": "bc31afe8172d00df",
    "fvit_fgclip_l14_ovlvis.py": "85dcb3c72127ca24",
    "fvit_tiny_cpu.py": "43ec6530c5a59c7a",
    "fvit_tiny_cpu_lvis.py": "da5c8d54038e9ce8",
}


def expected_train_pipeline(size, ratio_range) -> list[dict]:
    return [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="RandomResize", scale=size, ratio_range=ratio_range, keep_ratio=True),
        dict(type="RandomCrop", crop_type="absolute_range", crop_size=size, recompute_bbox=True, allow_negative_crop=True),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
        dict(type="RandomFlip", prob=0.5),
        dict(type="Pad", size=size),
        dict(type="PackDetInputs"),
    ]


def expected_test_pipeline(size) -> list[dict]:
    return [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=size, keep_ratio=True),
        dict(type="Pad", size=size),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]


def resolved(name: str) -> dict:
    return load_config(str(CONFIGS / name)).to_dict()


def canonical(value) -> str:
    """A text of ``value`` with dict keys sorted and tuples told from lists."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key!r}:{canonical(item)}" for key, item in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        inner = ",".join(canonical(item) for item in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def test_every_shipped_config_is_covered():
    assert sorted(path.name for path in CONFIGS.glob("fvit_*.py")) == sorted(SIZES) == sorted(DIGESTS)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_pipelines_are_the_ones_each_config_declared(name):
    size, ratio_range = SIZES[name]
    cfg = resolved(name)
    assert cfg["image_size"] == size
    assert cfg["train_pipeline"] == cfg["train_dataloader"]["dataset"]["pipeline"] == expected_train_pipeline(size, ratio_range)
    for key in ("test_pipeline", "val_dataloader", "test_dataloader"):
        pipeline = cfg[key] if key == "test_pipeline" else cfg[key]["dataset"]["pipeline"]
        assert pipeline == expected_test_pipeline(size), key


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_resolved_config_is_unchanged(name):
    digest = hashlib.sha256(canonical(resolved(name)).encode()).hexdigest()[:16]
    assert digest == DIGESTS[name], f"{name} resolves differently (if deliberate, update DIGESTS)"


@pytest.mark.parametrize("name", ["fvit_fgclip2_base.py", "fvit_fgclip_b16.py", "fvit_fgclip_l14.py"])
def test_ov_coco_configs_use_the_one_class_list(name):
    cfg = load_config(str(CONFIGS / name))
    head = cfg.model.roi_head.bbox_head
    assert cfg.classes == head.class_names == OV_COCO_CLASSES
    assert cfg.novel_classes == head.novel_classes == cfg.val_evaluator.novel_classes == OV_COCO_NOVEL_CLASSES
    for key in LOADERS:
        dataset = cfg[key].dataset
        assert dataset.metainfo.classes == OV_COCO_CLASSES and dataset.novel_classes == OV_COCO_NOVEL_CLASSES
