"""FG-OVD accuracy in float32 against bfloat16 autocast, on trained models and their held-out files.

The check behind the evaluation's default precision (issue 15): ``--bf16`` would become the
default on CPUs with bf16 matmuls only if it moved FG-OVD accuracy by less than 0.5 points. By
default it reads what ``make demo`` leaves in ``outputs/shapes`` (each stage's final model and
the held-out ``fgovd_{hard,medium,easy,trivial}.jsonl`` of the shapes scenes):

    python bench/eval_precision.py
    python bench/eval_precision.py --run-dir outputs/shapes --models stage2_hard/final
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fgclip.encoders import load_encoder
from fgclip.eval.features import FeatureExtractor
from fgclip.eval.fgovd import evaluate_fgovd, load_fgovd

SUBSETS = ("hard", "medium", "easy", "trivial")
STAGES = ("stage1/final", "stage2_global/final", "stage2_regional/final", "stage2_hard/final")


def accuracies(model_dir: Path, data_dir: Path, bf16: bool) -> dict[str, float]:
    """FG-OVD accuracy (%) of each subset, as the demo evaluates it."""
    extractor = FeatureExtractor(load_encoder(model_dir), num_workers=0, bf16=bf16, progress=False)
    benchmarks = [load_fgovd(data_dir / f"fgovd_{subset}.jsonl", data_dir, name=subset) for subset in SUBSETS]
    return {name: 100 * result["accuracy"] for name, result in evaluate_fgovd(extractor, benchmarks).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("outputs/shapes"), help="a `make demo` output")
    parser.add_argument("--models", nargs="+", default=list(STAGES), help="model dirs under --run-dir")
    parser.add_argument("--threshold", type=float, default=0.5, help="largest allowed move, in points")
    args = parser.parse_args()
    data_dir = args.run_dir / "data"
    missing = [str(path) for path in (data_dir, *(args.run_dir / model for model in args.models)) if not path.is_dir()]
    if missing:
        parser.error(f"not found: {', '.join(missing)} (run `make demo` first, or pass --run-dir / --models)")
    print(f"{'model':<24}" + "".join(f"{s + ' fp32 -> bf16':>26}" for s in SUBSETS) + f"{'largest move':>14}")
    largest = 0.0
    for model in args.models:
        fp32 = accuracies(args.run_dir / model, data_dir, bf16=False)
        bf16 = accuracies(args.run_dir / model, data_dir, bf16=True)
        moves = {s: bf16[s] - fp32[s] for s in SUBSETS}
        largest = max(largest, *map(abs, moves.values()))
        cells = "".join(f"{fp32[s]:6.2f} -> {bf16[s]:6.2f} ({moves[s]:+.2f})".rjust(26) for s in SUBSETS)
        print(f"{model:<24}{cells}{max(map(abs, moves.values())):>14.2f}")
    verdict = "below" if largest < args.threshold else "NOT below"
    print(f"largest move {largest:.2f} points: {verdict} the {args.threshold} threshold")


if __name__ == "__main__":
    main()
