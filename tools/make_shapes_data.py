"""Make the synthetic shapes data: FineHARD training records and held-out FG-OVD-style
and retrieval files (layout: `fgclip.data.shapes`). Same arguments, byte-identical files.

    python tools/make_shapes_data.py --out data/shapes --seed 0 --train 2000 --test 200
"""
from __future__ import annotations

import argparse
import sys
import time

from fgclip.data.shapes import write_shapes_dataset
from fgclip.errors import CommandParser, run_command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (also the image root)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--train", type=int, required=True, help="number of training scenes")
    parser.add_argument("--test", type=int, required=True, help="number of held-out scenes")
    parser.add_argument("--image-size", type=int, default=224, help="square image side in pixels (default 224)")
    args = parser.parse_args(argv)
    if args.train < 0 or args.test < 0:
        parser.error("--train and --test must be >= 0")
    if args.image_size < 32:
        parser.error("--image-size must be at least 32")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    meta = write_shapes_dataset(args.out, args.seed, args.train, args.test, args.image_size)
    print(
        f"wrote {meta['num_train']} training scenes ({meta['num_train_regions']} regions) and "
        f"{meta['num_test']} held-out scenes ({meta['num_test_regions']} regions) to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(run_command(main))
