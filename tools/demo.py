"""Smoke-run the core pipeline on the bundled image with a small random FG-CLIP.

Builds a small model from a config, saves and reloads it, prints a region x text score
table for assets/demo.png and writes a patch-similarity heatmap. Weights are random, so
the numbers only show that the pipeline runs end to end.
"""
import argparse
from pathlib import Path

import torch

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.cli import main as fgclip_main
from fgclip.testing import tiny_config

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def run(out: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(image_size=224, patch_size=16, hidden_size=64, num_layers=2, projection_dim=32)
    model_dir = out / "model"
    FGCLIPModel(config).save_pretrained(model_dir)
    FGCLIPProcessor.for_config(config).save_pretrained(model_dir)
    image = str(ASSETS / "demo.png")
    fgclip_main(["score", image, "--model", str(model_dir), "--device", "cpu",
                 "--box", "30,60,130,160", "--box", "170,40,290,160", "--box", "140,170,240,230",
                 "--text", "a red circle", "--text", "a blue striped square", "--text", "a black triangle"])
    fgclip_main(["heatmap", image, "a red circle", "--model", str(model_dir), "--device", "cpu",
                 "-o", str(out / "heatmap.png")])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    run(parser.parse_args().out)
