"""The miniature FG-CLIP recipe, end to end on the CPU (the README's main job).

1. make the synthetic shapes data (FineHARD training records, held-out FG-OVD-style and
   retrieval files) with ``fgclip.data.shapes``;
2. stage 1: global long + short contrastive training of a small random model;
3. stage 2 from the stage-1 model, three ways: global loss only, + regional, + hard negatives;
4. evaluate each model on the held-out scenes: FG-OVD-style hard / medium / easy / trivial
   accuracy and long-caption retrieval R@1;
5. print and write a table in the style of the paper's Table 6, and a heatmap PNG of the
   final model.

    python tools/shapes_recipe.py --out outputs/shapes
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from fgclip.cli import save_heatmap, similarity_map
from fgclip.data.shapes import write_shapes_dataset
from fgclip.eval.features import FeatureExtractor
from fgclip.eval.fgovd import evaluate_fgovd, load_fgovd
from fgclip.encoders import load_encoder
from fgclip.errors import CommandParser, run_command, write_atomically
from fgclip.eval.retrieval import RetrievalSet, evaluate_retrieval
from fgclip.training import load_config, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "fgclip"
SUBSETS = ("hard", "medium", "easy", "trivial")
STAGE2_VARIANTS = (
    ("+ L_global", {"loss.regional": False, "loss.hard_negatives": False}),
    ("+ L_regional", {"loss.regional": True, "loss.hard_negatives": False}),
    ("+ L_hard", {"loss.regional": True, "loss.hard_negatives": True}),
)


def as_overrides(values: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def retrieval_set(data_dir: Path) -> RetrievalSet:
    """Long-caption retrieval over the held-out scenes (one caption per image)."""
    rows = json.loads((data_dir / "retrieval.json").read_text())
    images = [str(data_dir / row["img_path"]) for row in rows]
    return RetrievalSet("shapes-long", str(data_dir / "retrieval.json"), images,
                        [row["long_caption"] for row in rows], list(range(len(rows))), "long",
                        [f"retrieval.json item {i}" for i in range(len(rows))])


def evaluate(model_dir: Path, data_dir: Path) -> dict[str, float]:
    extractor = FeatureExtractor(load_encoder(model_dir), batch_size=64, num_workers=0, progress=False)
    benchmarks = [load_fgovd(data_dir / f"fgovd_{subset}.jsonl", data_dir, name=subset) for subset in SUBSETS]
    scores = {name: result["accuracy"] for name, result in evaluate_fgovd(extractor, benchmarks).items()}
    retrieval = evaluate_retrieval(extractor, retrieval_set(data_dir))
    scores.update({"I2T R@1": retrieval["i2t_r1"], "T2I R@1": retrieval["t2i_r1"]})
    return scores


def markdown_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    columns = list(SUBSETS) + ["I2T R@1", "T2I R@1"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(f"{100 * scores[c]:.1f}" for c in columns) + " |"
              for name, scores in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    out = args.out.resolve()
    data_dir = out / "data"
    started = time.time()
    if not (data_dir / "meta.json").is_file():
        write_shapes_dataset(data_dir, seed=args.seed, num_train=args.train_scenes, num_test=args.test_scenes,
                             image_size=args.image_size)
    common = {"data.train": str(data_dir / "train.jsonl"), "data.image_root": str(data_dir),
              "training.seed": args.seed}

    stage1_config = load_config(CONFIGS / "shapes_stage1.yaml", as_overrides(
        {**common, "training.output_dir": str(out / "stage1")}) + args.stage1_overrides)
    stage1_dir = Path(train(stage1_config, resume=True).final_model_dir)
    rows = [("stage 1 (global)", evaluate(stage1_dir, data_dir))]

    for name, loss_overrides in STAGE2_VARIANTS:
        run_dir = out / ("stage2_" + name.split("_")[-1].lower())
        config = load_config(CONFIGS / "shapes_stage2.yaml", as_overrides(
            {**common, **loss_overrides, "model.path": str(stage1_dir), "training.output_dir": str(run_dir)})
            + args.stage2_overrides)
        final_dir = Path(train(config, resume=True).final_model_dir)
        rows.append((f"stage 2 {name}", evaluate(final_dir, data_dir)))

    table = markdown_table(rows)
    write_atomically(out / "results.md", table + "\n")
    write_atomically(out / "results.json", json.dumps(dict(rows), indent=2) + "\n")
    print("\nFG-OVD-style accuracy (%) and long-caption retrieval R@1 (%) on held-out shapes scenes:\n")
    print(table)

    model = load_encoder(final_dir)
    scene = json.loads((data_dir / "retrieval.json").read_text())[0]
    image = data_dir / scene["img_path"]
    query = json.loads((data_dir / "fgovd_hard.jsonl").read_text().splitlines()[0])["pos_expression"][0]
    save_heatmap(image, similarity_map(model, image, query), query, out / "heatmap.png")
    print(f"\nheatmap of {query!r}: {out / 'heatmap.png'}")
    print(f"total time {time.time() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/shapes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-scenes", type=int, default=2000)
    parser.add_argument("--test-scenes", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--stage1", dest="stage1_overrides", nargs="*", default=[],
                        help="key=value overrides of configs/fgclip/shapes_stage1.yaml")
    parser.add_argument("--stage2", dest="stage2_overrides", nargs="*", default=[],
                        help="key=value overrides of configs/fgclip/shapes_stage2.yaml")
    logging.basicConfig(level=logging.WARNING)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command(main))
