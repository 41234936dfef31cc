"""Shared fixtures. Detection (test_detection*.py, test_bad_inputs_detection.py): ``workspace`` is
what configs/fvit_tiny_cpu.py points at, relative to one directory per test module; a module that
needs other files overrides ``workspace``, and ``in_workspace`` runs a test in whichever it has."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny FG-CLIP, 16 training and 6 validation shape scenes, and their class embeddings
    (CLIPSelf's 63 templates)."""
    from fgclip.data.shapes import SHAPES, write_coco_detection
    from tiny_detection import ASSETS, load_tool, save_tiny_fgclip

    root = tmp_path_factory.mktemp("detection")
    assets = root / ASSETS
    save_tiny_fgclip(assets / "fgclip")
    write_coco_detection(assets / "shapes", "train", num_images=16, seed=0, image_size=64)
    write_coco_detection(assets / "shapes", "val", num_images=6, seed=1, image_size=64)
    load_tool("dump_class_embeddings").main(
        ["--model", str(assets / "fgclip"), "--vocab", ",".join(SHAPES), "--out", str(assets / "shapes_embeddings.pt")]
    )
    return root


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    """The test runs in ``workspace`` with mmdet's registry scope and no loggers of earlier tests."""
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    monkeypatch.chdir(workspace)
    init_default_scope("mmdet")
    # Runners started within the same second share a logger (named by the time), which would keep
    # writing to the previous test's captured, closed stdout.
    monkeypatch.setattr(MMLogger, "_instance_dict", OrderedDict())
    return workspace
