"""Start-up time: ``fgclip --help``, ``import fgclip`` and the model path against ``import torch,
transformers`` plus transformers' CLIP modeling module, each the best of N fresh processes.

    python bench/startup.py --repeats 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BASELINE = "import torch, transformers, transformers.models.clip.modeling_clip"
CASES = {
    "baseline: torch + transformers + CLIP modeling": [sys.executable, "-c", BASELINE],
    "import fgclip": [sys.executable, "-c", "import fgclip"],
    "model path: from fgclip import FGCLIPModel, FGCLIPProcessor": [
        sys.executable, "-c", "from fgclip import FGCLIPModel, FGCLIPProcessor"],
    "fgclip --help": [str(Path(sys.executable).with_name("fgclip")), "--help"],
}


def best_seconds(command: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"best of {args.repeats} fresh processes, load average {os.getloadavg()[0]:.1f}")
    seconds = {name: best_seconds(command, args.repeats) for name, command in CASES.items()}
    baseline = seconds[next(iter(CASES))]
    for name, value in seconds.items():
        print(f"{name:<62} {value:6.2f} s  {value / baseline:5.2f}x the baseline")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
