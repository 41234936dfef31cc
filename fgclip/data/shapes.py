"""Synthetic attribute scenes: coloured, patterned shapes with boxes and captions.

A scene holds 1 to 4 objects on a plain light-gray background. Objects have distinct
shapes and differ in colour, pattern and size; every object is described by the
expression ``"a {size} {colour} {pattern} {shape}"`` (e.g. "a large red striped star").
Size, colour and pattern are the *swappable* attributes: a hard negative swaps some of
them and never the shape name, so a model has to see the attributes to tell them apart.

Library functions (all deterministic given a seed):

- `render_scene(rng, image_size)` -> `Scene` (PIL image + objects with boxes and attributes);
- `scene_captions(scene)` -> (long caption with positions and spatial relations, short caption);
- `attribute_swaps(obj, rng, ...)` -> attribute-swapped negative expressions;
- `write_shapes_dataset(out, seed, num_train, num_test)` -> FineHARD training data plus
  held-out FG-OVD-style and retrieval files (used by ``tools/make_shapes_data.py``);
- `write_coco_detection(out, split, num_images, seed)` -> a COCO-format detection set whose
  categories are the shape names.

Output of `write_shapes_dataset` (paths relative to `out`, which is the image root)::

    images/{train,test}_NNNNNN.png
    train.jsonl, test.jsonl            FineHARD records (normalised xyxy boxes; 10 negatives per
                                       object, about 55 / 35 / 10 % of them swapping 1 / 2 / 3 attributes)
    fgovd_{hard,medium,easy,trivial}.jsonl   FG-CLIP's FG-OVD JSONL: img_path, bbox (x, y, w, h
                                       absolute pixels), pos_expression [1], neg_expression [10];
                                       hard / medium / easy swap 1 / 2 / 3 attributes, trivial
                                       negatives describe objects of other shapes
    retrieval.json                     [{img_path, long_caption, short_caption}] of the test scenes
    meta.json                          seed, sizes, vocabularies and the file list
"""
from __future__ import annotations

import itertools
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..errors import atomic_output, write_atomically

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
    "pink": (245, 125, 185),
    "cyan": (40, 200, 210),
}
PATTERNS = ("solid", "striped", "dotted", "checkered", "hollow")
SIZES = ("small", "large")
BACKGROUND = (225, 225, 225)
PATTERN_INK = (30, 30, 30)
SIZE_RANGES = {"small": (0.15, 0.21), "large": (0.30, 0.37)}  # object side as a fraction of the image side
NUM_NEGATIVES = 10
FGOVD_SUBSETS = {"hard": 1, "medium": 2, "easy": 3}  # attributes swapped per negative
TRAIN_SWAP_WEIGHTS = (0.6, 0.3, 0.1)  # sampling weights of training negatives swapping 1 / 2 / 3 attributes
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object.

    Attributes:
        shape / colour / pattern / size: names from `SHAPES`, `COLOURS`, `PATTERNS`, `SIZES`.
        box: tight pixel box (x1, y1, x2, y2) of the drawn pixels, x2 / y2 exclusive.
        area: number of drawn pixels.
    """

    shape: str
    colour: str
    pattern: str
    size: str
    box: tuple[int, int, int, int]
    area: int

    @property
    def expression(self) -> str:
        return describe(self.size, self.colour, self.pattern, self.shape)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    """A rendered scene: the RGB image and its objects (left to right)."""

    image: Image.Image
    objects: list[ShapeObject]


def describe(size: str, colour: str, pattern: str, shape: str) -> str:
    """The object expression, "a {size} {colour} {pattern} {shape}"."""
    return f"a {size} {colour} {pattern} {shape}"


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split`: scenes are independent of each other and of the count."""
    return np.random.default_rng((seed, zlib.crc32(split.encode("utf-8")), index))


# ---------------------------------------------------------------------------- drawing
def _shape_points(shape: str, side: int) -> list[tuple[float, float]]:
    """Polygon of `shape` inscribed in a side x side square (not used for circles)."""
    s, c = side - 1, (side - 1) / 2
    if shape == "square":
        return [(0, 0), (s, 0), (s, s), (0, s)]
    if shape == "triangle":
        return [(c, 0), (s, s), (0, s)]
    if shape == "diamond":
        return [(c, 0), (s, c), (c, s), (0, c)]
    if shape == "hexagon":
        return [(c + c * math.cos(a), c + c * math.sin(a)) for a in np.arange(6) * math.pi / 3]
    if shape == "star":
        radii = [c if k % 2 == 0 else 0.45 * c for k in range(10)]
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        return [(c + r * math.cos(a), c + r * math.sin(a)) for r, a in zip(radii, angles)]
    if shape == "cross":
        a, b = s / 3, 2 * s / 3
        return [(a, 0), (b, 0), (b, a), (s, a), (s, b), (b, b), (b, s), (a, s), (a, b), (0, b), (0, a), (a, a)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _shape_mask(shape: str, pattern: str, side: int) -> Image.Image:
    """Binary ("L", 0/255) mask of the shape; hollow shapes keep only an outline."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    width = max(2, side // 8)
    if shape == "circle":
        box = (0, 0, side - 1, side - 1)
        draw.ellipse(box, outline=255, width=width) if pattern == "hollow" else draw.ellipse(box, fill=255)
    else:
        points = _shape_points(shape, side)
        if pattern == "hollow":
            draw.polygon(points, outline=255, width=width)
        else:
            draw.polygon(points, fill=255)
    return mask


def _texture(colour: str, pattern: str, side: int, period: int) -> Image.Image:
    """side x side RGB fill: the colour with the pattern drawn in dark ink."""
    yy, xx = np.mgrid[0:side, 0:side]
    half = max(1, period // 2)
    if pattern == "striped":
        ink = ((xx + yy) // half) % 2 == 1
    elif pattern == "checkered":
        ink = (xx // half + yy // half) % 2 == 1
    elif pattern == "dotted":
        dx, dy = xx % period - (period - 1) / 2, yy % period - (period - 1) / 2
        ink = dx * dx + dy * dy <= (period / 4) ** 2
    else:  # solid and hollow: plain colour
        ink = np.zeros((side, side), dtype=bool)
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[:] = COLOURS[colour]
    pixels[ink] = PATTERN_INK
    return Image.fromarray(pixels, "RGB")


def _overlaps(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]], gap: int) -> bool:
    return any(
        box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap for o in others
    )


def render_scene(rng: np.random.Generator, image_size: int = 224, num_objects: int | None = None) -> Scene:
    """Draw a scene of `num_objects` (default: 1 to 4 at random) non-overlapping objects.

    Shapes are distinct within a scene; colour, pattern and size are drawn at random.
    An object that cannot be placed without overlap after 100 tries is left out, so a
    scene always has at least one object but may have fewer than asked (rare at 4).

    Returns:
        A `Scene` whose objects are sorted left to right by box centre.
    """
    if num_objects is None:
        num_objects = int(rng.integers(1, 5))
    if not 1 <= num_objects <= len(SHAPES):
        raise ValueError(f"num_objects must be in 1..{len(SHAPES)}, got {num_objects}")
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    period = max(4, round(image_size / 28))
    margin, gap = max(1, image_size // 50), max(2, image_size // 40)
    shapes = rng.choice(len(SHAPES), size=num_objects, replace=False)
    sizes = rng.integers(0, len(SIZES), size=num_objects)
    order = np.argsort(-sizes, kind="stable")  # place large objects first
    objects: list[ShapeObject] = []
    placed: list[tuple[int, int, int, int]] = []
    for k in order:
        shape, size = SHAPES[shapes[k]], SIZES[sizes[k]]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        low, high = SIZE_RANGES[size]
        side = max(8, round(rng.uniform(low, high) * image_size))
        for _ in range(100):
            x0 = int(rng.integers(margin, image_size - side - margin + 1))
            y0 = int(rng.integers(margin, image_size - side - margin + 1))
            if not _overlaps((x0, y0, x0 + side, y0 + side), placed, gap):
                break
        else:
            continue
        placed.append((x0, y0, x0 + side, y0 + side))
        mask = _shape_mask(shape, pattern, side)
        image.paste(_texture(colour, pattern, side, period), (x0, y0), mask)
        bx1, by1, bx2, by2 = mask.getbbox()
        area = int(np.count_nonzero(np.asarray(mask)))
        box = (x0 + bx1, y0 + by1, x0 + bx2, y0 + by2)
        objects.append(ShapeObject(shape=shape, colour=colour, pattern=pattern, size=size, box=box, area=area))
    objects.sort(key=lambda obj: obj.center)
    return Scene(image=image, objects=objects)


# ---------------------------------------------------------------------------- text
def _position(obj: ShapeObject, image_size: int) -> str:
    """Where the object's centre is on a 3 x 3 grid, e.g. "at the top left of the image"."""
    cx, cy = obj.center
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / image_size))]
    col = ("left", "center", "right")[min(2, int(3 * cx / image_size))]
    if row == "middle":
        place = "in the center" if col == "center" else f"on the {col}"
    else:
        place = f"at the {row}" if col == "center" else f"at the {row} {col}"
    return f"{place} of the image"


def _relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`, from the centre displacement (dx, dy) = b - a.

    Horizontal ("to the left of") when |dy| <= |dx| / 2, vertical ("above") when
    |dx| <= |dy| / 2, otherwise both ("above and to the left of").
    """
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    horizontal = "to the left of" if dx > 0 else "to the right of"
    vertical = "above" if dy > 0 else "below"
    if 2 * abs(dy) <= abs(dx):
        return horizontal
    if 2 * abs(dx) <= abs(dy):
        return vertical
    return f"{vertical} and {horizontal}"


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _the(expression: str) -> str:
    return "the" + expression[1:]


def region_long_expression(obj: ShapeObject, image_size: int) -> str:
    """The object expression with its place in the image, e.g. "a small red solid star at the top left of the image"."""
    return f"{obj.expression} {_position(obj, image_size)}"


def scene_captions(scene: Scene) -> tuple[str, str]:
    """(long caption, short caption) of a scene.

    The long caption lists the objects, says where each one is, and relates each
    object to its right-hand neighbour ("... is to the left of / above / below and to
    the right of ...").
    The short caption is "a photo of " + the object expressions.
    """
    objects, size = scene.objects, scene.image.width
    expressions = [obj.expression for obj in objects]
    count = len(objects)
    sentences = [
        f"There {'is' if count == 1 else 'are'} {NUMBER_WORDS[count]} object{'' if count == 1 else 's'} "
        f"on a light gray background: {_join(expressions)}."
    ]
    sentences += [f"{_the(obj.expression).capitalize()} is {_position(obj, size)}." for obj in objects]
    sentences += [
        f"{_the(a.expression).capitalize()} is {_relation(a, b)} {_the(b.expression)}."
        for a, b in zip(objects, objects[1:])
    ]
    return " ".join(sentences), "a photo of " + _join(expressions)


# ---------------------------------------------------------------------------- negatives
_ATTRIBUTE_COMBOS = tuple(itertools.product(SIZES, COLOURS, PATTERNS))  # every (size, colour, pattern)


def _variants(obj: ShapeObject) -> dict[int, list[tuple[str, str, str]]]:
    """The (size, colour, pattern) combinations other than `obj`'s, by number of attributes swapped (1, 2, 3)."""
    own = (obj.size, obj.colour, obj.pattern)
    by_swaps: dict[int, list[tuple[str, str, str]]] = {1: [], 2: [], 3: []}
    for combo in _ATTRIBUTE_COMBOS:
        swapped = (combo[0] != own[0]) + (combo[1] != own[1]) + (combo[2] != own[2])
        if swapped:
            by_swaps[swapped].append(combo)
    return by_swaps


def attribute_swaps(
    obj: ShapeObject, rng: np.random.Generator, num_swapped: int, count: int = NUM_NEGATIVES
) -> list[str]:
    """`count` distinct expressions of `obj`'s shape with exactly `num_swapped` attributes swapped."""
    variants = _variants(obj)[num_swapped]
    if len(variants) < count:
        raise ValueError(f"only {len(variants)} variants swap {num_swapped} attributes; asked for {count}")
    picks = rng.choice(len(variants), size=count, replace=False)
    return [describe(*variants[i], obj.shape) for i in picks]


def training_negatives(
    obj: ShapeObject, rng: np.random.Generator, weights: Sequence[float] = TRAIN_SWAP_WEIGHTS
) -> list[str]:
    """10 distinct negatives of `obj`, drawn without replacement with weights `weights` for 1, 2 and 3 swaps."""
    by_swaps = _variants(obj)
    variants = [combo for k in (1, 2, 3) for combo in by_swaps[k]]
    probabilities = np.concatenate([np.full(len(by_swaps[k]), weights[k - 1] / len(by_swaps[k])) for k in (1, 2, 3)])
    picks = rng.choice(len(variants), size=NUM_NEGATIVES, replace=False, p=probabilities / probabilities.sum())
    return [describe(*variants[i], obj.shape) for i in picks]


def other_shape_expressions(obj: ShapeObject, rng: np.random.Generator, count: int = NUM_NEGATIVES) -> list[str]:
    """`count` distinct expressions of objects of other shapes (FG-OVD "trivial" negatives)."""
    pool = [(shape, combo) for shape in SHAPES if shape != obj.shape for combo in _ATTRIBUTE_COMBOS]
    picks = rng.choice(len(pool), size=count, replace=False)
    return [describe(*pool[i][1], pool[i][0]) for i in picks]


# ---------------------------------------------------------------------------- files
def _normalised_box(box: tuple[int, int, int, int], image_size: int) -> list[float]:
    return [round(v / image_size, 6) for v in box]


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_output(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _scene_record(scene: Scene, f_path: str, rng: np.random.Generator) -> dict[str, Any]:
    """A FineHARD record of `scene`; its negatives use `rng`."""
    long_caption, short_caption = scene_captions(scene)
    size = scene.image.width
    return {
        "f_path": f_path,
        "caption": long_caption,
        "short_caption": short_caption,
        "bbox_info": [
            {
                "bbox": _normalised_box(obj.box, size),
                "short_expr": obj.expression,
                "long_expr": region_long_expression(obj, size),
                "flag_short_neg": 1,
                "short_expr_negs": {str(k): text for k, text in enumerate(training_negatives(obj, rng))},
            }
            for obj in scene.objects
        ],
    }


def write_shapes_dataset(
    out_dir: str | Path, seed: int, num_train: int, num_test: int, image_size: int = 224
) -> dict[str, Any]:
    """Write the shapes training set (FineHARD) and its held-out evaluation files into `out_dir`.

    Same arguments give byte-identical files. See the module docstring for the layout.

    Returns:
        The content of ``meta.json``.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    train_records = []
    for index in range(num_train):
        rng = scene_rng(seed, "train", index)
        scene = render_scene(rng, image_size)
        f_path = f"images/train_{index:06d}.png"
        scene.image.save(out / f_path)
        train_records.append(_scene_record(scene, f_path, rng))
    _write_jsonl(out / "train.jsonl", train_records)

    test_records, retrieval = [], []
    fgovd: dict[str, list[dict[str, Any]]] = {name: [] for name in (*FGOVD_SUBSETS, "trivial")}
    for index in range(num_test):
        rng = scene_rng(seed, "test", index)
        scene = render_scene(rng, image_size)
        f_path = f"images/test_{index:06d}.png"
        scene.image.save(out / f_path)
        record = _scene_record(scene, f_path, rng)
        test_records.append(record)
        retrieval.append(
            {"img_path": f_path, "long_caption": record["caption"], "short_caption": record["short_caption"]}
        )
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            entry = {"img_path": f_path, "bbox": [x1, y1, x2 - x1, y2 - y1], "pos_expression": [obj.expression]}
            for name, num_swapped in FGOVD_SUBSETS.items():
                fgovd[name].append({**entry, "neg_expression": attribute_swaps(obj, rng, num_swapped)})
            fgovd["trivial"].append({**entry, "neg_expression": other_shape_expressions(obj, rng)})
    _write_jsonl(out / "test.jsonl", test_records)
    for name, rows in fgovd.items():
        _write_jsonl(out / f"fgovd_{name}.jsonl", rows)
    write_atomically(out / "retrieval.json", json.dumps(retrieval, indent=1, ensure_ascii=False) + "\n")

    meta = {
        "seed": seed,
        "image_size": image_size,
        "num_train": num_train,
        "num_test": num_test,
        "num_train_regions": sum(len(r["bbox_info"]) for r in train_records),
        "num_test_regions": sum(len(r["bbox_info"]) for r in test_records),
        "shapes": list(SHAPES),
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "patterns": list(PATTERNS),
        "sizes": list(SIZES),
        "files": {
            "train": "train.jsonl",
            "test": "test.jsonl",
            "retrieval": "retrieval.json",
            **{f"fgovd_{name}": f"fgovd_{name}.jsonl" for name in fgovd},
        },
    }
    write_atomically(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    return meta


def write_coco_detection(
    out_dir: str | Path, split: str, num_images: int, seed: int, image_size: int = 224
) -> Path:
    """Render `num_images` scenes as a COCO-format detection set (categories = shape names).

    Writes ``{out_dir}/{split}/NNNNNN.png`` and ``{out_dir}/annotations/instances_{split}.json``
    (image ``file_name`` relative to ``{out_dir}/{split}/``; category ids 1..7 in `SHAPES`
    order; each annotation also carries the object's ``attributes`` and ``caption``).

    Returns:
        The annotation file path.
    """
    out = Path(out_dir)
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    category_ids = {shape: index + 1 for index, shape in enumerate(SHAPES)}
    images, annotations = [], []
    for index in range(num_images):
        scene = render_scene(scene_rng(seed, f"coco-{split}", index), image_size)
        file_name = f"{index:06d}.png"
        scene.image.save(out / split / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[obj.shape],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": obj.area,
                    "iscrowd": 0,
                    "attributes": {"size": obj.size, "colour": obj.colour, "pattern": obj.pattern},
                    "caption": obj.expression,
                }
            )
    coco = {
        "info": {"description": f"fgclip shapes detection ({split}, seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": shape, "supercategory": "shape"} for shape, i in category_ids.items()],
    }
    path = out / "annotations" / f"instances_{split}.json"
    write_atomically(path, json.dumps(coco) + "\n")
    return path
