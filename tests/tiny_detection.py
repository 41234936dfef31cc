"""What the tiny CPU detection configs point at, shared by the detection tests: a tiny random FG-CLIP
saved with its processor, and the tools loaded from their files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.testing import tiny_config

REPO = Path(__file__).resolve().parents[1]
ASSETS = "work_dirs/tiny_cpu"  # where configs/fvit_tiny_cpu*.py look, relative to the working directory


def load_tool(name: str):
    """``tools/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_tiny_fgclip(directory: Path) -> FGCLIPModel:
    """A seeded 4-block random FG-CLIP and its processor, saved to ``directory``."""
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config(num_layers=4)).eval()
    model.save_pretrained(directory)
    FGCLIPProcessor.for_config(model.config).save_pretrained(directory)
    return model
