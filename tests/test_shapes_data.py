"""The synthetic shapes data: determinism, FineHARD / FG-OVD / retrieval / COCO files, and
boxes that match the drawn pixels. Attributes are parsed back from the text, not taken
from the generator."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgclip.data import FineHARDReader
from fgclip.data.shapes import BACKGROUND, COLOURS, SHAPES, write_coco_detection

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 96
EXPRESSION = re.compile(r"^a (small|large) (\w+) (solid|striped|dotted|checkered|hollow) (\w+)$")


def parse(expression):
    """(size, colour, pattern, shape) of "a {size} {colour} {pattern} {shape}"."""
    match = EXPRESSION.match(expression)
    assert match, f"unexpected expression {expression!r}"
    return match.groups()


def swapped(a, b):
    """Number of differing attributes among size, colour and pattern."""
    return sum(x != y for x, y in zip(parse(a)[:3], parse(b)[:3]))


def run_tool(out, seed, train=10, test=8):
    spec = importlib.util.spec_from_file_location("make_shapes_data", ROOT / "tools" / "make_shapes_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--out", str(out), "--seed", str(seed), "--train", str(train), "--test", str(test),
               "--image-size", str(IMAGE_SIZE)])
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return run_tool(tmp_path_factory.mktemp("shapes") / "a", seed=7)


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different(dataset, tmp_path):
    again = tree(run_tool(tmp_path / "b", seed=7))
    assert again == tree(dataset)
    other = tree(run_tool(tmp_path / "c", seed=8))
    assert other.keys() == again.keys()
    assert other["train.jsonl"] != again["train.jsonl"]
    assert all(other[name] != again[name] for name in again if name.startswith("images/"))


def test_training_records_follow_finehard_rules(dataset):
    records = list(FineHARDReader(dataset / "train.jsonl"))  # validates the schema
    assert len(records) == 10
    for record in records:
        assert 1 <= len(record.regions) <= 4
        assert record.short_caption.startswith("a photo of ")
        shapes = [parse(region.short_expr)[3] for region in record.regions]
        assert len(set(shapes)) == len(shapes) and set(shapes) <= set(SHAPES)
        for region in record.regions:
            assert record.caption.count(region.short_expr[2:]) >= 2  # listed and placed in the long caption
            assert region.short_expr in record.short_caption
            assert region.long_expr.startswith(region.short_expr + " ")
            assert len(set(region.negatives)) == 10 and region.short_expr not in region.negatives
            for negative in region.negatives:
                assert parse(negative)[3] == parse(region.short_expr)[3]  # object name unchanged
                assert 1 <= swapped(negative, region.short_expr) <= 3


def test_long_caption_relations_agree_with_boxes(dataset):
    relation = re.compile(
        r"The (\w+ \w+ \w+ \w+) is ((?:above|below)(?: and)?)? ?(to the (?:left|right) of)? the (\w+ \w+ \w+ \w+)\."
    )
    checked = 0
    for record in FineHARDReader(dataset / "train.jsonl"):
        # centres in pixels (boxes are whole pixels / image size)
        centers = {
            r.short_expr[2:]: ((round(r.box[0] * IMAGE_SIZE) + round(r.box[2] * IMAGE_SIZE)) / 2,
                               (round(r.box[1] * IMAGE_SIZE) + round(r.box[3] * IMAGE_SIZE)) / 2)
            for r in record.regions
        }
        found = relation.findall(record.caption)
        assert len(found) == len(record.regions) - 1, record.caption
        for a, vertical, horizontal, b in found:
            dx, dy = centers[b][0] - centers[a][0], centers[b][1] - centers[a][1]
            # horizontal only within 26.6 degrees of the x axis, vertical only within 26.6 of y
            expect_vertical = "" if 2 * abs(dy) <= abs(dx) else ("above" if dy > 0 else "below")
            expect_horizontal = "" if 2 * abs(dx) <= abs(dy) else ("to the left of" if dx > 0 else "to the right of")
            assert vertical.removesuffix(" and") == expect_vertical, (record.caption, a, b)
            assert horizontal == expect_horizontal, (record.caption, a, b)
            assert vertical.endswith(" and") == bool(expect_vertical and expect_horizontal)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("subset, num_swapped", [("hard", 1), ("medium", 2), ("easy", 3), ("trivial", None)])
def test_fgovd_negatives_swap_the_right_number_of_attributes(dataset, subset, num_swapped):
    rows = read_jsonl(dataset / f"fgovd_{subset}.jsonl")
    test_regions = [r for record in FineHARDReader(dataset / "test.jsonl") for r in record.regions]
    assert len(rows) == len(test_regions) > 0
    for row, region in zip(rows, test_regions):
        assert set(row) == {"img_path", "bbox", "pos_expression", "neg_expression"}
        (positive,) = row["pos_expression"]
        assert positive == region.short_expr
        negatives = row["neg_expression"]
        assert len(negatives) == len(set(negatives)) == 10 and positive not in negatives
        for negative in negatives:
            if num_swapped is None:
                assert parse(negative)[3] != parse(positive)[3]
            else:
                assert parse(negative)[3] == parse(positive)[3] and swapped(negative, positive) == num_swapped


def test_boxes_are_tight_around_the_drawn_objects(dataset):
    rows = read_jsonl(dataset / "fgovd_hard.jsonl")
    solid = 0
    background = np.array(BACKGROUND)
    for row in rows:
        pixels = np.asarray(Image.open(dataset / row["img_path"]).convert("RGB")).astype(int)
        height, width, _ = pixels.shape
        x, y, w, h = row["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
        drawn = (pixels != background).any(-1)
        inside = drawn[y : y + h, x : x + w]
        # tight: every border row / column of the box holds object pixels ...
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # ... and the one-pixel ring around the box is background (objects never touch)
        ring = np.zeros_like(drawn)
        ring[max(0, y - 1) : y + h + 1, max(0, x - 1) : x + w + 1] = True
        ring[y : y + h, x : x + w] = False
        assert not drawn[ring].any()
        size, colour, pattern, shape = parse(row["pos_expression"][0])
        if pattern == "solid":
            centre = pixels[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2]
            assert (centre == np.array(COLOURS[colour])).all()
            solid += 1
        side = max(w, h) / width
        assert (side < 0.25) if size == "small" else (side > 0.27)
    assert solid > 0


def test_finehard_boxes_match_fgovd_boxes(dataset):
    rows = read_jsonl(dataset / "fgovd_easy.jsonl")
    regions = [(record.f_path, r) for record in FineHARDReader(dataset / "test.jsonl") for r in record.regions]
    for row, (f_path, region) in zip(rows, regions):
        x, y, w, h = row["bbox"]
        assert row["img_path"] == f_path
        assert np.allclose(np.array(region.box) * IMAGE_SIZE, [x, y, x + w, y + h], atol=1e-3)


def test_retrieval_split(dataset):
    items = json.loads((dataset / "retrieval.json").read_text())
    records = list(FineHARDReader(dataset / "test.jsonl"))
    assert len(items) == len(records) == 8
    for item, record in zip(items, records):
        expected = {"img_path": record.f_path, "long_caption": record.caption, "short_caption": record.short_caption}
        assert item == expected
        assert (dataset / item["img_path"]).is_file()
    assert len({item["long_caption"] for item in items}) == len(items)
    meta = json.loads((dataset / "meta.json").read_text())
    assert all((dataset / name).is_file() for name in meta["files"].values())


def test_coco_detection_set(tmp_path):
    from pycocotools.coco import COCO

    path = write_coco_detection(tmp_path, "val", num_images=6, seed=1, image_size=IMAGE_SIZE)
    coco = COCO(str(path))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(SHAPES)
    assert len(coco.imgs) == 6 and len(coco.anns) >= 6
    for annotation in coco.anns.values():
        image = coco.imgs[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        assert 0 < annotation["area"] <= w * h
        assert parse(annotation["caption"])[3] == coco.cats[annotation["category_id"]]["name"]
        assert (tmp_path / "val" / image["file_name"]).is_file()
    again = write_coco_detection(tmp_path / "again", "val", num_images=6, seed=1, image_size=IMAGE_SIZE)
    assert again.read_bytes() == path.read_bytes()
