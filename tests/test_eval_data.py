"""Benchmark readers: every public format parses into the expected items, and malformed files
(missing keys, boxes outside the image, unknown images) raise errors naming file and record."""
import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from fgclip.errors import ConfigError
from fgclip.eval.boxcls import load_coco_boxes, load_lvis_boxes, load_openimages_boxes
from fgclip.eval.cli import add_eval_subcommand, run_eval
from fgclip.eval.common import DataError, RegionRequests
from fgclip.eval.fgovd import find_fgovd_files, load_fgovd
from fgclip.eval.retrieval import load_caption_file, load_dci, load_sharegpt4v, load_tsv
from fgclip.eval.runner import parse_path_overrides, prepare
from fgclip.eval.zeroshot import load_image_folder


def draw(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 30, 200)).save(path)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def coco_root(tmp_path):
    draw(tmp_path / "coco/val2017/000000000001.jpg", 64, 48)
    draw(tmp_path / "coco/train2017/000000000002.jpg", 40, 30)
    return tmp_path / "coco"


def fgovd_records():
    return [
        {"img_path": "val2017/000000000001.jpg", "bbox": [1.0, 2.0, 10.0, 20.0], "pos_expression": ["a red mug"],
         "neg_expression": ["a blue mug", "a green mug"], "width": 64, "height": 48},
        {"img_path": "val2017/000000000001.jpg", "bbox": [0, 0, 64, 48], "pos_expression": "a table",
         "neg_expression": [f"negative {i}" for i in range(10)], "width": 64, "height": 48},
    ]


# ---------------------------------------------------------------------------------- FG-OVD
def test_fgovd_jsonl_and_original_json_give_the_same_items(tmp_path, coco_root):
    jsonl = load_fgovd(write_jsonl(tmp_path / "hard.jsonl", fgovd_records()), coco_root)
    original = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48,
                    "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"}],
        "categories": [{"id": 10 + i, "name": name} for i, name in enumerate(
            ["a red mug", "a blue mug", "a green mug", "a table", *[f"negative {i}" for i in range(10)]])],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1.0, 2.0, 10.0, 20.0], "category_id": 10, "neg_category_ids": [11, 12]},
            {"id": 2, "image_id": 1, "bbox": [0, 0, 64, 48], "category_id": 13,
             "neg_category_ids": list(range(14, 24))},
        ],
    }
    (tmp_path / "1_attributes.json").write_text(json.dumps(original))
    lvis_style = load_fgovd(tmp_path / "1_attributes.json", coco_root, name="hard")
    for items in (jsonl.items, lvis_style.items):
        assert [it.box for it in items] == [(1.0, 2.0, 11.0, 22.0), (0.0, 0.0, 64.0, 48.0)]
        assert [it.positive for it in items] == ["a red mug", "a table"]
        assert [len(it.negatives) for it in items] == [2, 10]
        assert items[0].image == str(coco_root / "val2017/000000000001.jpg")
    assert jsonl.name == lvis_style.name == "hard"


def test_find_fgovd_files(tmp_path):
    for name in ("1_attributes_llava.jsonl", "medium.jsonl", "shuffle_negatives.json", "color.jsonl", "other.jsonl"):
        (tmp_path / name).write_text("")
    found = find_fgovd_files(tmp_path)
    assert {k: v.name for k, v in found.items()} == {
        "hard": "1_attributes_llava.jsonl", "medium": "medium.jsonl", "trivial": "shuffle_negatives.json",
        "color": "color.jsonl",
    }
    (tmp_path / "hard.jsonl").write_text("")
    with pytest.raises(DataError, match="several files for FG-OVD subset 'hard'"):
        find_fgovd_files(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("bbox"), r"bad\.jsonl line 2: missing key 'bbox'"),
        (lambda r: r.update(bbox=[60.0, 10.0, 30.0, 10.0]), r"bad\.jsonl line 2: bbox .* lies outside the 64x48 image"),
        (lambda r: r.update(img_path="val2017/missing.jpg"), r"bad\.jsonl line 2: image file not found: .*missing\.jpg"),
        (lambda r: r.update(neg_expression=[]), r"bad\.jsonl line 2: 'neg_expression' must be"),
        (lambda r: r.update(bbox=[1, 2, 0, 5]), r"bad\.jsonl line 2: bbox .* zero or negative size"),
        (lambda r: r.update(bbox=[-0.9, 1.0, 0.4, 5.0]), r"bad\.jsonl line 2: bbox .* lies outside the 64x48 image"),
    ],
)
def test_fgovd_jsonl_errors_name_file_and_line(tmp_path, coco_root, change, message):
    records = fgovd_records()
    change(records[1])
    with pytest.raises(DataError, match=message):
        load_fgovd(write_jsonl(tmp_path / "bad.jsonl", records), coco_root)


def test_fgovd_original_json_errors(tmp_path, coco_root):
    data = {"images": [{"id": 1, "file_name": "val2017/000000000001.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 7, "image_id": 3, "bbox": [0, 0, 5, 5], "category_id": 1, "neg_category_ids": [2]}]}
    path = tmp_path / "color.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"color\.json annotations\[0\] \(id 7\): unknown image_id 3"):
        load_fgovd(path, coco_root)
    data["annotations"][0].update(image_id=1, neg_category_ids=[2, 9])
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 7\): unknown category id 9"):
        load_fgovd(path, coco_root)


def test_box_tolerance_clips_rounding_but_not_real_overflow(tmp_path, coco_root):
    records = fgovd_records()[:1]
    records[0]["bbox"] = [-0.4, 1.0, 64.6, 10.0]  # 0.4 px over each side: annotation rounding
    items = load_fgovd(write_jsonl(tmp_path / "a.jsonl", records), coco_root).items
    assert items[0].box == (0.0, 1.0, 64.0, 11.0)


# ---------------------------------------------------------------------------------- boxes
def coco_detection(tmp_path: Path) -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48,
             "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"},
            {"id": 2, "width": 40, "height": 30, "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg"},
        ],
        "categories": [{"id": 5, "name": "alarm_clock"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [5, 5, 30, 20], "iscrowd": 1},
            {"id": 13, "image_id": 1, "category_id": 5, "bbox": [20, 10, 40, 30], "iscrowd": 0},
        ],
    }


def test_coco_and_lvis_boxes(tmp_path, coco_root):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_detection(tmp_path)))
    coco = load_coco_boxes(path, coco_root)
    assert coco.classnames == ["alarm_clock", "cat"]
    lvis = load_lvis_boxes(path, coco_root)
    assert lvis.classnames == ["alarm clock", "cat"]
    by_id = dict(zip([s.split("(id ")[1][:2] for s in lvis.sources], zip(lvis.images, lvis.boxes, lvis.labels)))
    assert by_id["11"] == (str(coco_root / "val2017/000000000001.jpg"), (0.0, 0.0, 10.0, 10.0), 1)
    assert by_id["12"] == (str(coco_root / "train2017/000000000002.jpg"), (5.0, 5.0, 35.0, 25.0), 0)  # crowd kept
    assert by_id["13"][1:] == ((20.0, 10.0, 60.0, 40.0), 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][1].pop("category_id"), r"instances\.json annotations\[1\]: missing key 'category_id'"),
        (lambda d: d["annotations"][2].update(image_id=42), r"annotations\[2\] \(id 13\): unknown image_id 42"),
        (lambda d: d["annotations"][2].update(category_id=3), r"annotations\[2\] \(id 13\): unknown category_id 3"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, 10, 60]), r"annotations\[0\] \(id 11\): bbox .* outside the 64x48"),
        (lambda d: d["images"][0].update(coco_url="http://x/val2017/nope.jpg"), r"image id 1: image file not found"),
        (lambda d: d.pop("categories"), r"instances\.json: missing key 'categories'"),
        (lambda d: d["annotations"][2].update(id=11), r"instances\.json annotations\[2\]: duplicate annotation id 11"),
    ],
)
def test_coco_errors_name_file_and_record(tmp_path, coco_root, change, message):
    data = coco_detection(tmp_path)
    change(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_coco_boxes(path, coco_root)


def write_openimages(tmp_path: Path, rows: list[str], header: bool = True) -> tuple[Path, Path]:
    draw(tmp_path / "oi/abc.jpg", 50, 40)
    classes = tmp_path / "classes.csv"
    classes.write_text(("LabelName,DisplayName\n" if header else "") + "/m/01,Cat\n/m/02,Traffic light\n")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\n" + "".join(rows))
    return boxes, classes


@pytest.mark.parametrize("header", [True, False])
def test_openimages_boxes(tmp_path, header):
    boxes, classes = write_openimages(tmp_path, ["abc,x,/m/02,1,0.1,0.5,0.2,1.0,0\n", "abc,x,/m/01,1,0,1,0,1,1\n"], header)
    dataset = load_openimages_boxes(boxes, classes, tmp_path / "oi")
    assert dataset.classnames == ["Cat", "Traffic light"] and dataset.normalized
    assert dataset.boxes == [(0.1, 0.2, 0.5, 1.0), (0.0, 0.0, 1.0, 1.0)]
    assert dataset.labels == [1, 0]


@pytest.mark.parametrize(
    "row, message",
    [
        ("abc,x,/m/09,1,0.1,0.5,0.2,0.9,0\n", r"boxes\.csv line 3: LabelName '/m/09' is not in"),
        ("abc,x,/m/01,1,0.1,1.2,0.2,0.9,0\n", r"boxes\.csv line 3: box .* outside the image"),
        ("abc,x,/m/01,1,0.1,oops,0.2,0.9,0\n", r"boxes\.csv line 3: XMin/XMax/YMin/YMax must be numbers"),
        ("zzz,x,/m/01,1,0.1,0.5,0.2,0.9,0\n", r"boxes\.csv line 3: image file not found: .*zzz\.jpg"),
    ],
)
def test_openimages_errors(tmp_path, row, message):
    boxes, classes = write_openimages(tmp_path, ["abc,x,/m/02,1,0.1,0.5,0.2,1.0,0\n", row])
    with pytest.raises(DataError, match=message):
        load_openimages_boxes(boxes, classes, tmp_path / "oi")


def test_openimages_missing_column(tmp_path):
    boxes, classes = write_openimages(tmp_path, [])
    boxes.write_text("ImageID,LabelName,XMin,XMax,YMin\n")
    with pytest.raises(DataError, match=r"boxes\.csv: missing column\(s\) \['YMax'\]"):
        load_openimages_boxes(boxes, classes, tmp_path / "oi")


def test_region_requests_group_boxes_per_image():
    regions = RegionRequests()
    handles = [regions.add("a.jpg", (0, 0, 1, 1), "r0"), regions.add("b.jpg", (0, 0, 2, 2), "r1"),
               regions.add("a.jpg", (1, 1, 2, 2), "r2"), regions.add("a.jpg", (0, 0, 1, 1), "r3")]
    assert handles == [(0, 0), (1, 0), (0, 1), (0, 0)]
    requests = regions.requests()
    assert [r.path for r in requests] == ["a.jpg", "b.jpg"]
    assert requests[0].boxes.tolist() == [[0, 0, 1, 1], [1, 1, 2, 2]]
    regions.add("c.jpg", (0, 0, 1, 1), "r4", size=(10, 10))
    with pytest.raises(DataError, match="r5: image c.jpg is declared 10x12 here but 10x10 at r4"):
        regions.add("c.jpg", (0, 0, 1, 1), "r5", size=(10, 12))


# ---------------------------------------------------------------------------------- retrieval
def test_sharegpt4v_first_records_and_basename_fallback(tmp_path, caplog):
    draw(tmp_path / "images/sa_1.jpg", 20, 20)
    draw(tmp_path / "images/coco/train2017/2.jpg", 20, 20)
    records = [
        {"image": "sam/images/sa_1.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                           {"from": "gpt", "value": "a long caption one"}]},
        {"image": "coco/train2017/2.jpg", "conversations": [{"from": "gpt", "value": "caption two"}]},
        {"image": "unused.jpg", "conversations": []},
    ]
    path = tmp_path / "share.json"
    path.write_text(json.dumps(records))
    dataset = load_sharegpt4v(path, tmp_path / "images", limit=2)
    assert dataset.images == [str(tmp_path / "images/sa_1.jpg"), str(tmp_path / "images/coco/train2017/2.jpg")]
    assert dataset.texts == ["a long caption one", "caption two"] and dataset.text_kind == "long"
    with pytest.raises(DataError, match=r"share\.json record 2: 'conversations' has no 'gpt' turn"):
        load_sharegpt4v(path, tmp_path / "images", limit=3)
    records[2]["conversations"] = [{"from": "gpt", "value": "caption three"}]
    path.write_text(json.dumps(records))
    draw(tmp_path / "images/unused.jpg", 20, 20)
    short = load_sharegpt4v(path, tmp_path / "images", limit=4)  # the official script's [:4] of a 3-record file
    assert short.texts == ["a long caption one", "caption two", "caption three"]
    assert f"{path}: 3 records, fewer than the 4 of the benchmark: scoring all 3" in caplog.text


def test_dci_folder(tmp_path):
    draw(tmp_path / "photos/x.jpg", 20, 20)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann/1.json").write_text(json.dumps({"image": "x.jpg", "extra_caption": "dense caption", "mask": {}}))
    dataset = load_dci(tmp_path / "ann", tmp_path / "photos")
    assert dataset.texts == ["dense caption"] and dataset.text_to_image == [0]
    (tmp_path / "ann/2.json").write_text(json.dumps({"image": "x.jpg", "short_caption": "s"}))
    with pytest.raises(DataError, match=r"ann/2\.json: missing key 'extra_caption'"):
        load_dci(tmp_path / "ann", tmp_path / "photos")


def test_caption_formats_group_captions_per_image(tmp_path):
    draw(tmp_path / "val2017/1.jpg", 20, 20)
    draw(tmp_path / "val2017/2.jpg", 20, 20)
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "coco_url": "http://h/val2017/1.jpg"},
                       {"id": 2, "file_name": "2.jpg", "coco_url": "http://h/val2017/2.jpg"},
                       {"id": 3, "file_name": "3.jpg"}],  # no caption: not part of the benchmark
            "annotations": [{"image_id": 2, "caption": "two a"}] +
                           [{"image_id": 1, "caption": f"one {i}"} for i in range(6)] +
                           [{"image_id": 2, "caption": "two b"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    dataset = load_caption_file(tmp_path / "captions.json", tmp_path, "coco", max_captions=5)
    assert dataset.images == [str(tmp_path / "val2017/1.jpg"), str(tmp_path / "val2017/2.jpg")]
    assert dataset.texts == [f"one {i}" for i in range(5)] + ["two a", "two b"]
    assert dataset.text_to_image == [0] * 5 + [1, 1]

    karpathy = {"images": [
        {"filepath": "val2017", "filename": "1.jpg", "split": "test", "sentences": [{"raw": "k1"}, {"raw": "k2"}]},
        {"filepath": "val2017", "filename": "2.jpg", "split": "train", "sentences": [{"raw": "skip"}]}]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(karpathy))
    dataset = load_caption_file(tmp_path / "dataset_flickr30k.json", tmp_path, "flickr30k")
    assert dataset.texts == ["k1", "k2"] and dataset.text_to_image == [0, 0]

    blip = [{"image": "val2017/2.jpg", "caption": ["b1", "b2"]}, {"image": "val2017/1.jpg", "caption": "b3"},
            {"image": "val2017/2.jpg", "caption": ["b4"]}]
    (tmp_path / "blip.json").write_text(json.dumps(blip))
    dataset = load_caption_file(tmp_path / "blip.json", tmp_path, "flickr30k")
    assert dataset.texts == ["b1", "b2", "b3", "b4"] and dataset.text_to_image == [0, 0, 1, 0]

    coco["annotations"].append({"image_id": 9, "caption": "lost"})
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"captions\.json annotations\[8\]: unknown image_id 9"):
        load_caption_file(tmp_path / "captions.json", tmp_path, "coco")


def test_tsv_chinese_captions(tmp_path):
    draw(tmp_path / "a.jpg", 20, 20)
    draw(tmp_path / "b.jpg", 20, 20)
    (tmp_path / "cn.tsv").write_text("a.jpg\t一只猫\n\nb.jpg\t一条狗\na.jpg\t猫在睡觉\n", encoding="utf-8")
    dataset = load_tsv(tmp_path / "cn.tsv", text_kind="long")
    assert dataset.texts == ["一只猫", "一条狗", "猫在睡觉"] and dataset.text_to_image == [0, 1, 0]
    assert dataset.name == "cn" and dataset.text_kind == "long"
    (tmp_path / "bad.tsv").write_text("a.jpg\tok\nb.jpg no tab\n")
    with pytest.raises(DataError, match=r"bad\.tsv line 2: expected 'image<TAB>caption'"):
        load_tsv(tmp_path / "bad.tsv")
    (tmp_path / "missing.tsv").write_text("c.jpg\tcaption\n")
    with pytest.raises(DataError, match=r"missing\.tsv line 1: image file not found"):
        load_tsv(tmp_path / "missing.tsv")


# ---------------------------------------------------------------------------------- zero-shot
def test_image_folder_class_order(tmp_path):
    for folder in ("n02", "n01", "n03"):
        draw(tmp_path / "wnid" / folder / "x.jpg", 8, 8)
    draw(tmp_path / "wnid/n01/y.png", 8, 8)
    (tmp_path / "wnid/n01/notes.txt").write_text("not an image")
    dataset = load_image_folder(tmp_path / "wnid", ["first", "second", "third"])
    assert [Path(p).relative_to(tmp_path / "wnid").as_posix() for p in dataset.images] == [
        "n01/x.jpg", "n01/y.png", "n02/x.jpg", "n03/x.jpg"]
    assert dataset.labels == [0, 0, 1, 2]
    with pytest.raises(DataError, match="3 class folders but 1000 class names"):
        load_image_folder(tmp_path / "wnid")
    for folder in ("7", "999"):
        draw(tmp_path / "v2" / folder / "x.jpeg", 8, 8)
    dataset = load_image_folder(tmp_path / "v2")
    assert dataset.labels == [7, 999] and len(dataset.classnames) == 1000


# ---------------------------------------------------------------------------------- layout
def test_prepare_skips_absent_benchmarks_and_errors_when_asked_by_name(tmp_path, coco_root):
    (tmp_path / "fgovd").mkdir()
    write_jsonl(tmp_path / "fgovd/3_attributes.jsonl", fgovd_records())
    prepared, skipped = prepare(tmp_path, tasks=["fgovd", "boxcls"])
    assert [p.label for p in prepared] == ["fgovd"] and [b.name for b in prepared[0].payload] == ["easy"]
    assert set(skipped) == {"coco_boxes", "lvis_boxes", "openimages_boxes", "boxclass_cn"}
    with pytest.raises(DataError, match="dataset 'lvis_boxes': not found"):
        prepare(tmp_path, datasets=["lvis_boxes"])
    overrides = parse_path_overrides([f"coco_boxes.ann={tmp_path / 'instances.json'}"])
    (tmp_path / "instances.json").write_text(json.dumps(coco_detection(tmp_path)))
    prepared, _ = prepare(tmp_path, datasets=["coco_boxes"], overrides=overrides)
    assert prepared[0].label == "boxcls/coco" and len(prepared[0].payload.labels) == 3
    with pytest.raises(ConfigError, match="--path coco.ann=x: expected DATASET.KEY=PATH"):
        parse_path_overrides(["coco.ann=x"])


def test_eval_subcommand_parses_and_lists_the_layout(capsys):
    parser = argparse.ArgumentParser(prog="fgclip")
    add_eval_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", "a=/x", "--model", "/y", "--tasks", "fgovd,zeroshot",
                              "--path", "dci.ann=/d", "--bf16", "--list-datasets", "--data-root", "/data"])
    assert args.func is run_eval and args.model == ["a=/x", "/y"] and args.tasks == ["fgovd", "zeroshot"]
    assert args.path == ["dci.ann=/d"] and args.bf16 and args.max_captions == 5
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "lvis_boxes.ann: /data/lvis/lvis_v1_val.json" in printed
    assert "imagenet.classnames: (optional, no default)" in printed
