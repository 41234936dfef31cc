"""The ``fgclip`` command: region-text scores and patch-similarity heatmaps from any checkpoint.

    fgclip score IMAGE --box x1,y1,x2,y2 --box ... --text "a black dog" --text ...
    fgclip heatmap IMAGE "black dog" -o out.png
    fgclip eval --model PATH --tasks fgovd,boxcls,retrieval,zeroshot --data-root DIR
    fgclip to-safetensors CHECKPOINT/pytorch_model.bin --trust-source   # a pickle the loaders refuse
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CommandParser, ConfigError, check_output_file, command, print_output, write_atomically
from .eval.cli import add_eval_subcommand

if TYPE_CHECKING:  # torch and the models load when a command runs, not for --help
    import torch

    from .encoders import Encoder

DEFAULT_MODEL = "qihoo360/fg-clip-base"


def parse_text(text: str) -> str:
    """A non-empty description (an empty one would score its padding and print a number)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a text is empty; give words to look for")
    return text


def check_boxes(boxes: list[list[float]], image, name: str) -> None:
    """Each box must have area and lie inside the image (boxes are not clamped)."""
    for box in boxes:
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height):
            shown, size = ",".join(f"{value:g}" for value in box), f"{image.width}x{image.height}"
            raise ConfigError(name, f"--box {shown}: expected 0 <= x1 < x2 <= {image.width} and "
                                    f"0 <= y1 < y2 <= {image.height} (pixels of this {size} image)")


def parse_box(text: str) -> list[float]:
    """``"x1,y1,x2,y2"`` -> four floats (original image pixels)."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a box is x1,y1,x2,y2 in pixels, got {text!r}")
    return values


def score_regions(model: Encoder, image, boxes: list[list[float]], texts: list[str]) -> torch.Tensor:
    """(K boxes, T texts) cosine similarities between region features and region texts; boxes are
    checked against the image, not clamped."""
    import torch

    from .image_io import load_image

    name = str(image) if isinstance(image, (str, Path)) else "image"
    image = load_image(image)
    check_boxes(boxes, image, name)
    batch = model.processor(images=[image], boxes=[torch.tensor(boxes, dtype=torch.float32)])
    with torch.no_grad():
        regions = model.encode_regions(batch.to(model.device))
        return (regions @ model.encode_texts(texts, "region").t()).cpu()


def similarity_map(model: Encoder, image, text: str) -> torch.Tensor:
    """(H, W) cosine similarity between each patch and ``text``, upsampled to the image size."""
    import torch
    import torch.nn.functional as F

    from .image_io import load_image

    image = load_image(image)
    with torch.no_grad():
        dense = model.dense_maps(model.processor(images=[image]).to(model.device))[0]
        query = model.encode_texts([text], "short")[0]
        grid = (dense @ query)[None, None].float()
        return F.interpolate(grid, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0].cpu()


def save_heatmap(image, similarity: torch.Tensor, text: str, output: str | Path, alpha: float = 0.5) -> None:
    """Blend ``similarity`` over ``image`` (jet colour map, as in the paper's figures) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .image_io import load_image

    image = load_image(image)
    figure, axis = plt.subplots(figsize=(6, 6 * image.height / image.width))
    axis.imshow(image)
    overlay = axis.imshow(similarity.numpy(), cmap="jet", alpha=alpha)
    figure.colorbar(overlay, ax=axis, fraction=0.046, pad=0.04, label="cosine similarity")
    axis.set_title(text)
    axis.axis("off")
    png = io.BytesIO()  # matplotlib ignores a failed close: write the file ourselves
    figure.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output, png.getvalue())


def format_table(scores: torch.Tensor, boxes: list[list[float]], texts: list[str]) -> str:
    header = ["box"] + texts
    rows = [[",".join(f"{v:g}" for v in box)] + [f"{s:.4f}" for s in row] for box, row in zip(boxes, scores.tolist())]
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header] + rows]
    return "\n".join(lines[:1] + ["  ".join("-" * width for width in widths)] + lines[1:])


NEGATIVE_BOX = re.compile(r"-[0-9.,\s+-]+")


def attach_negative_boxes(argv: list[str]) -> list[str]:
    """``--box -5,-5,10,10`` read as ``--box=-5,-5,10,10``: argparse would take a value that starts with
    ``-`` for an option and report "expected one argument"."""
    attached = []
    for argument in argv:
        if attached and attached[-1] == "--box" and NEGATIVE_BOX.fullmatch(argument):
            attached[-1] = f"--box={argument}"
        else:
            attached.append(argument)
    return attached


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="fgclip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)

    def add_common(sub):
        sub.add_argument("image", help="image file")
        sub.add_argument("--model", default=DEFAULT_MODEL, help="FG-CLIP or FG-CLIP 2 checkpoint directory or hub id")
        sub.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda:1 ...")

    score = subparsers.add_parser("score", help="print a region x text cosine-similarity table")
    add_common(score)
    score.add_argument("--box", type=parse_box, action="append", required=True, help="x1,y1,x2,y2 in pixels")
    score.add_argument("--text", type=parse_text, action="append", required=True, help="a region description")

    heatmap = subparsers.add_parser("heatmap", help="write the patch-text similarity map blended over the image")
    add_common(heatmap)
    heatmap.add_argument("text", type=parse_text, help="what to look for, e.g. 'black dog'")
    heatmap.add_argument("-o", "--output", required=True, help="output PNG")
    heatmap.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    convert = subparsers.add_parser("to-safetensors", help="convert a pickled torch.save weight file to safetensors")
    convert.add_argument("file", help="e.g. CHECKPOINT/pytorch_model.bin (becomes CHECKPOINT/model.safetensors)")
    convert.add_argument("--trust-source", action="store_true", required=True,
                         help="required: the file is unpickled, which runs any code it holds")
    add_eval_subcommand(subparsers)
    for sub in (score, heatmap, convert):
        sub.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    """The ``fgclip`` console script; an input error prints ``error: <file>: <what>`` and gives status 2."""
    args = build_parser().parse_args(attach_negative_boxes(sys.argv[1:] if argv is None else list(argv)))
    if args.command == "eval":
        return args.func(args)
    if args.command == "to-safetensors":
        from .checkpoint_files import pickle_to_safetensors

        print_output(f"wrote {pickle_to_safetensors(args.file)}")
        return 0
    from .encoders import load_encoder, resolve_device
    from .image_io import load_image

    image = load_image(args.image)  # input errors before the model loads
    if args.command == "score":
        check_boxes(args.box, image, args.image)
    else:
        check_output_file(args.output, "-o")
    model = load_encoder(args.model, device=resolve_device(args.device))
    if args.command == "score":
        print_output(format_table(score_regions(model, image, args.box, args.text), args.box, args.text))
    elif args.command == "heatmap":
        save_heatmap(image, similarity_map(model, image, args.text), args.text, args.output, args.alpha)
        print_output(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
