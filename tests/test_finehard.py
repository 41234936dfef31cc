"""FineHARD schema, readers (JSON list, JSONL, tar shards), dataset and collate."""
from __future__ import annotations

import copy
import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fgclip.data import (
    FineHARDCollator,
    FineHARDDataset,
    FineHARDReader,
    FineHARDShardDataset,
    RecordError,
    iter_shard_records,
    load_rgb,
    write_finehard_shards,
)

NEGATIVE_KEYS = [str(k) for k in range(10)]


def region(box, name, negatives=True):
    out = {
        "bbox": box,
        "short_expr": f"a {name}",
        "long_expr": f"a {name} seen from the front",
        "flag_short_neg": int(negatives),
    }
    if negatives:
        out["short_expr_negs"] = {key: f"a {name} variant {key}" for key in NEGATIVE_KEYS}
    return out


def record(index, num_regions=2):
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.75, 1.0, 0.9], [0.5, 0.0, 1.0, 0.25], [0.1, 0.1, 0.2, 0.3]]
    return {
        "f_path": f"img_{index}.png",
        "caption": f"a long caption of image {index} with many words",
        "short_caption": f"a photo of image {index}",
        "bbox_info": [region(boxes[k % 4], f"object {index}-{k}", negatives=k != 1) for k in range(num_regions)],
    }


def write_jsonl(path, items, blank_line_after_first=False):
    lines = [json.dumps(item) if not isinstance(item, str) else item for item in items]
    if blank_line_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_preprocess(size=16):
    """Squash to size x size (pixel value = mean colour) and scale boxes like the processor; records
    the image sizes of each call."""

    def preprocess(images, boxes):
        preprocess.calls.append([image.size for image in images])
        pixel_values, mapped = [], []
        for image, image_boxes in zip(images, boxes, strict=True):
            assert image.mode == "RGB"
            width, height = image.size
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).mean((0, 1))
            pixel_values.append(pixels.view(1, 3, 1, 1).expand(1, 3, size, size).clone())
            mapped.append(image_boxes * torch.tensor([size / width, size / height, size / width, size / height]))
        return {"pixel_values": torch.cat(pixel_values), "boxes": mapped}

    preprocess.calls = []  # the image sizes of each call
    return preprocess


def fake_text_processor():
    """A processor for texts only: encodes a text as its character codes padded with 0 (``input_ids``
    alone); remembers every call as ``(texts, text_kind, padding)``."""

    def processor(text, text_kind="short", padding="max_length"):
        processor.calls.append((list(text), text_kind, padding))
        length = max(len(item) for item in text)
        ids = torch.zeros(len(text), length, dtype=torch.long)
        for row, item in enumerate(text):
            ids[row, : len(item)] = torch.tensor([ord(c) for c in item])
        return {"input_ids": ids}

    processor.minimal_padding = "longest"
    processor.calls = []
    return processor


def decode(ids):
    return ["".join(chr(c) for c in row.tolist() if c) for row in ids]


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / f"img_{index}.png")
    return root


# ---------------------------------------------------------------------------- readers
def test_json_list_and_jsonl_give_the_same_records(tmp_path):
    items = [record(i, num_regions=i % 4) for i in range(5)]
    items[3]["is_cn"] = True
    (tmp_path / "data.json").write_text(json.dumps(items, indent=2))
    write_jsonl(tmp_path / "data.jsonl", items, blank_line_after_first=True)
    from_list = FineHARDReader(tmp_path / "data.json")
    from_lines = FineHARDReader(tmp_path / "data.jsonl")
    assert (from_list.format, from_lines.format) == ("json", "jsonl")
    assert list(from_list) == list(from_lines)
    assert [r.to_dict() for r in from_lines] == items  # round trip of the schema
    assert from_lines[2].regions[1].score == 0.9 and from_lines[2].regions[1].negatives is None
    assert from_lines[2].regions[0].negatives == tuple(f"a object 2-0 variant {k}" for k in range(10))
    assert from_lines.location(1) == f"{tmp_path / 'data.jsonl'} line 3"  # the blank line 2 is skipped
    assert from_lines[3].is_cn is True and from_lines[4].is_cn is None
    assert from_lines[-1] == from_list[4]
    with pytest.raises(IndexError):
        from_lines[5]


def test_jsonl_reader_survives_pickling_like_a_dataloader_worker(tmp_path):
    reader = FineHARDReader(write_jsonl(tmp_path / "data.jsonl", [record(i) for i in range(4)]))
    first = reader[2]
    copy_in_worker = pickle.loads(pickle.dumps(reader))
    assert copy_in_worker[2] == first and copy_in_worker[0] == reader[0]


def _without(key):
    def mutate(item):
        del item[key]

    return mutate


def _set_region(index, key, value):
    def mutate(item):
        item["bbox_info"][index][key] = value

    return mutate


def _drop_negative(key):
    def mutate(item):
        del item["bbox_info"][0]["short_expr_negs"][key]

    return mutate


MALFORMED = [
    # (mutation, field named in the message, problem text, skip reason)
    (_without("caption"), "caption", "missing", "caption: missing"),
    (_without("bbox_info"), "bbox_info", "missing", "bbox_info: missing"),
    (_set_region(1, "bbox", [0.1, 0.2, 1.5, 0.9]), "bbox_info[1].bbox",
     "expected 4 or 5 numbers in [0, 1], got [0.1, 0.2, 1.5, 0.9]", "bbox_info[].bbox: out of range"),
    (_set_region(0, "bbox", [0.1, 0.2, 0.3]), "bbox_info[0].bbox",
     "expected 4 or 5 numbers in [0, 1]", "bbox_info[].bbox: wrong type"),
    (_set_region(0, "bbox", [0.5, 0.2, 0.3, 0.9]), "bbox_info[0].bbox",
     "expected x1 < x2 and y1 < y2", "bbox_info[].bbox: empty box"),
    (_set_region(0, "short_expr", 7), "bbox_info[0].short_expr",
     "expected a string, got 7", "bbox_info[].short_expr: wrong type"),
    (_set_region(0, "flag_short_neg", 2), "bbox_info[0].flag_short_neg", "expected 0 or 1, got 2",
     "bbox_info[].flag_short_neg: invalid value"),
    (_set_region(0, "short_expr_negs", ["x"] * 10), "bbox_info[0].short_expr_negs", "expected a dict",
     "bbox_info[].short_expr_negs: wrong type"),
    (_drop_negative("7"), "bbox_info[0].short_expr_negs", "missing ['7']", "bbox_info[].short_expr_negs: bad keys"),
    (_set_region(0, "short_expr_negs", {k: "a object 1-0" for k in NEGATIVE_KEYS}), 'bbox_info[0].short_expr_negs["0"]',
     "identical to short_expr", 'bbox_info[].short_expr_negs["0"]: equals positive'),
    (lambda item: item.update(is_cn="yes"), "is_cn", 'expected true or false, got "yes"', "is_cn: wrong type"),
]


@pytest.mark.parametrize("mutate, field, problem, reason", MALFORMED)
def test_malformed_record_names_file_line_and_field(tmp_path, mutate, field, problem, reason):
    items = [record(0), record(1), record(2)]
    mutate(items[1])
    path = write_jsonl(tmp_path / "train.jsonl", items)
    with pytest.raises(RecordError) as error:
        FineHARDReader(path)
    assert str(error.value).startswith(f"{path} line 2: {field}: ")
    assert problem in str(error.value)
    assert error.value.reason == reason
    (tmp_path / "train.json").write_text(json.dumps(items))
    with pytest.raises(RecordError, match=re.escape(f"train.json item 1: {field}: ")):
        FineHARDReader(tmp_path / "train.json")


def test_bad_json_line_and_non_object(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [record(0), record(1), '{"f_path": "x.png", "caption": '])
    with pytest.raises(RecordError, match=r"train\.jsonl line 3: invalid JSON"):
        FineHARDReader(path)
    path = write_jsonl(tmp_path / "list.jsonl", [record(0), "[1, 2]"])
    with pytest.raises(RecordError, match=r"list\.jsonl line 2: expected a JSON object, got \[1, 2\]"):
        FineHARDReader(path)


def test_skip_mode_counts_bad_records_and_reasons(tmp_path):
    items = [copy.deepcopy(record(i)) for i in range(6)]
    del items[1]["caption"]
    items[3]["bbox_info"][1]["bbox"] = [0.0, 0.0, 2.0, 1.0]
    items[4]["bbox_info"][0]["bbox"] = [-0.1, 0.0, 0.5, 1.0]
    lines = items[:5] + ["not json", items[5]]
    reader = FineHARDReader(write_jsonl(tmp_path / "train.jsonl", lines), skip_bad_records=True)
    assert [r.f_path for r in reader] == ["img_0.png", "img_2.png", "img_5.png"]
    assert [reader.location(i).rsplit(" ", 1)[1] for i in range(3)] == ["1", "3", "7"]
    assert (reader.stats.seen, reader.stats.skipped) == (7, 4)
    assert dict(reader.stats.reasons) == {"caption: missing": 1, "bbox_info[].bbox: out of range": 2, "invalid JSON": 1}
    assert reader.stats.summary() == (
        "skipped 4 of 7 records (bbox_info[].bbox: out of range: 2, caption: missing: 1, invalid JSON: 1)"
    )
    assert reader.stats.examples[0].endswith("line 2: caption: missing")


# ---------------------------------------------------------------------------- shards
def test_shards_round_trip(tmp_path, image_root):
    items = [record(i, num_regions=i % 4) for i in range(5)]
    source = write_jsonl(tmp_path / "train.jsonl", items)
    pattern = str(tmp_path / "shards" / "part-%03d.tar")
    shards = write_finehard_shards(source, image_root, pattern, max_samples_per_shard=2)
    assert [Path(s).name for s in shards] == ["part-000.tar", "part-001.tar", "part-002.tar"]
    streamed = list(iter_shard_records(shards))
    reader = FineHARDReader(source)
    assert [record for _, _, record, _ in streamed] == list(reader)
    for (key, image, rec, skipped), index in zip(streamed, range(5)):
        assert key == f"{index:09d}" and skipped == []
        assert np.array_equal(np.asarray(image), np.asarray(load_rgb(image_root / rec.f_path)))

    map_style = FineHARDDataset(source, image_root, fake_preprocess(), seed=3)
    iterable = FineHARDShardDataset(str(tmp_path / "shards" / "part-{000..002}.tar"), fake_preprocess(), seed=3)
    for epoch in (0, 1):
        map_style.set_epoch(epoch)
        iterable.set_epoch(epoch)
        for a, b in zip([map_style[i] for i in range(5)], iterable, strict=True):
            assert a["region_texts"] == b["region_texts"] and a["hard_negative_texts"] == b["hard_negative_texts"]
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shard_bad_samples_raise_or_are_skipped(tmp_path, image_root):
    png = (image_root / "img_0.png").read_bytes()
    bad = record(1)
    bad["bbox_info"][0]["bbox"] = [0.0, 0.0, 1.0]
    shard = tmp_path / "bad.tar"
    _write_tar(shard, [
        ("a.png", png), ("a.json", json.dumps(record(0)).encode()),
        ("b.png", png), ("b.json", json.dumps(bad).encode()),
        ("c.json", json.dumps(record(2)).encode()),
        ("d.png", png), ("d.json", json.dumps(record(3)).encode()),
        ("e.png", png), ("e.json", b"{not json"),
    ])
    with pytest.raises(RecordError, match=rf"{shard} sample b: bbox_info\[0\]\.bbox: expected 4 or 5 numbers"):
        list(iter_shard_records([str(shard)]))
    dataset = FineHARDShardDataset([str(shard)], fake_preprocess(), skip_bad_records=True)
    samples = list(dataset)
    assert [s["short_text"] for s in samples] == ["a photo of image 0", "a photo of image 3"]
    # Skips travel with the next good sample; those after the last one travel with it.
    assert [s["skipped_records"] for s in samples] == [
        [], ["bbox_info[].bbox: wrong type", "image: missing", "invalid JSON"]]
    assert (dataset.stats.seen, dataset.stats.skipped) == (5, 3)
    assert FineHARDCollator(fake_text_processor())(samples)["skipped_records"] == samples[1]["skipped_records"]


def test_shard_of_only_bad_samples_warns_with_its_count(tmp_path, image_root):
    shard = tmp_path / "bad.tar"
    _write_tar(shard, [("a.json", json.dumps(record(0)).encode()), ("b.png", b"not a png")])
    with pytest.warns(UserWarning, match=r"all 2 samples .* skipped \((image: missing: 1, .*: 1|.*: 1, image: missing: 1)\)"):
        assert list(iter_shard_records([str(shard)], skip_bad_records=True)) == []


# ---------------------------------------------------------------------------- dataset
def test_dataset_maps_boxes_and_converts_image_modes(tmp_path, image_root):
    Image.new("L", (64, 48), 100).save(image_root / "gray.png")
    rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 32, 48))  # left half fully transparent: alpha dropped -> blue
    rgba.save(image_root / "rgba.png")
    items = [dict(record(0, 2), f_path="gray.png"), dict(record(1, 2), f_path="rgba.png")]
    dataset = FineHARDDataset(write_jsonl(tmp_path / "d.jsonl", items), image_root, fake_preprocess(size=16))
    gray, rgba_sample = dataset[0], dataset[1]
    assert torch.allclose(gray["pixel_values"][:, 0, 0], torch.tensor([100.0, 100.0, 100.0]))
    # half blue (0, 0, 255), half red (255, 0, 0): the alpha channel is dropped, as PIL's convert("RGB")
    assert torch.allclose(rgba_sample["pixel_values"][:, 0, 0], torch.tensor([127.5, 0.0, 127.5]))
    # region boxes [0, 0, .5, .5] and [.25, .5, .75, 1] on a 64 x 48 image -> original pixels -> 16 x 16 input
    expected = torch.tensor([[0.0, 0.0, 32.0, 24.0], [16.0, 24.0, 48.0, 48.0]]) * torch.tensor([16 / 64, 16 / 48] * 2)
    assert torch.allclose(gray["boxes"], expected)


def test_dataset_with_fgclip_processor_maps_boxes_to_input_pixels(tmp_path, image_root):
    from fgclip import FGCLIPProcessor

    processor = FGCLIPProcessor(image_size=32)
    dataset = FineHARDDataset(write_jsonl(tmp_path / "d.jsonl", [record(0, 2)]), image_root, processor)
    sample = dataset[0]
    assert sample["pixel_values"].shape == (3, 32, 32)
    assert torch.allclose(sample["boxes"], torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 16.0, 24.0, 32.0]]))
    batch = FineHARDCollator(processor)([sample])
    assert batch["short_input_ids"][0, 0].item() == 49406  # bos
    assert batch["long_input_ids"].shape[0] == 1



def test_a_dataloader_batch_is_one_processor_call_and_fgclip_samples_stay_as_alone(tmp_path, image_root):
    """FG-CLIP squashes each image on its own, so a batch's samples equal each image processed alone."""
    from fgclip import FGCLIPProcessor

    sizes = [(64, 48), (30, 90), (200, 130)]
    for index, size in enumerate(sizes):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            image_root / f"mixed_{index}.png")
    items = [dict(record(i, 3), f_path=f"mixed_{i}.png") for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", items)
    for mode in ("squash", "pad"):
        dataset = FineHARDDataset(path, image_root, FGCLIPProcessor(image_size=32, resize_mode=mode), seed=2)
        alone = [dataset[i] for i in range(3)]
        for batched, single in zip(dataset.__getitems__([0, 1, 2]), alone, strict=True):
            assert torch.equal(batched["pixel_values"], single["pixel_values"])
            assert torch.equal(batched["boxes"], single["boxes"]) and batched.keys() == single.keys()
    fake = fake_preprocess()
    loader = torch.utils.data.DataLoader(FineHARDDataset(path, image_root, fake), batch_size=2,
                                         collate_fn=FineHARDCollator(fake_text_processor()))
    assert [batch["pixel_values"].shape[0] for batch in loader] == [2, 1]
    assert fake.calls == [[(64, 48), (30, 90)], [(200, 130)]]


def test_shard_batches_share_one_processor_call(tmp_path, image_root):
    source = write_jsonl(tmp_path / "train.jsonl", [record(i, i % 3) for i in range(5)])
    write_finehard_shards(source, image_root, str(tmp_path / "part-%03d.tar"), max_samples_per_shard=2)
    fake = fake_preprocess()
    streamed = list(FineHARDShardDataset(str(tmp_path / "part-{000..002}.tar"), fake, seed=1, batch_size=2))
    assert [len(call) for call in fake.calls] == [2, 2, 1]
    map_style = FineHARDDataset(source, image_root, fake_preprocess(), seed=1)
    for a, b in zip([map_style[i] for i in range(5)], streamed, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["pixel_values"], b["pixel_values"])
        assert a["region_texts"] == b["region_texts"]
    with pytest.raises(ValueError, match="batch_size"):
        FineHARDShardDataset(str(tmp_path / "part-000.tar"), fake, batch_size=0)


def test_small_images_are_resized_to_a_square_first(tmp_path, image_root):
    """FG-CLIP 2's training rule: a side under 128 px -> a small_image_size square (PIL's default
    resize filter); normalised boxes follow the image."""
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (100, 300, 3), dtype=np.uint8)).save(image_root / "tall.png")
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(image_root / "edge.png")
    items = [dict(record(0, 2), f_path="tall.png"), dict(record(1, 2), f_path="edge.png")]
    seen = []

    def keep_images(images, boxes):
        seen.extend(images)
        return fake_preprocess()(images, boxes)

    dataset = FineHARDDataset(write_jsonl(tmp_path / "d.jsonl", items), image_root, keep_images, small_image_size=40)
    samples = dataset.__getitems__([0, 1])
    tall = Image.open(image_root / "tall.png").convert("RGB")
    assert [image.size for image in seen] == [(40, 40), (128, 128)]
    assert np.array_equal(np.asarray(seen[0]), np.asarray(tall.resize((40, 40))))
    # boxes [0, 0, .5, .5] and [.25, .5, .75, 1] on the 40 x 40 image, then squashed to 16 x 16
    assert torch.equal(samples[0]["boxes"], torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 20.0, 30.0, 40.0]]) * 0.4)
    with pytest.raises(ValueError, match="small_image_size"):
        FineHARDDataset(write_jsonl(tmp_path / "e.jsonl", items), image_root, keep_images, small_image_size=-1)

def test_max_boxes_captions_and_negatives(tmp_path, image_root):
    items = [record(i, num_regions=4) for i in range(3)]
    items[0]["bbox_info"] += [region([0.6, 0.6, 0.9, 0.9], "object 0-4"), region([0.0, 0.6, 0.3, 0.9], "object 0-5")]
    path = write_jsonl(tmp_path / "d.jsonl", items)
    for max_boxes, kept in [(4, 4), (2, 2), (0, 0), (10, 6)]:
        sample = FineHARDDataset(path, image_root, fake_preprocess(), max_boxes=max_boxes)[0]
        assert sample["boxes"].shape == (kept, 4) and len(sample["region_texts"]) == kept
        # region 1 of every record has no negatives
        assert sample["hard_negative_regions"] == [k for k in range(kept) if k != 1]
        for k, group in zip(sample["hard_negative_regions"], sample["hard_negative_texts"]):
            assert group == [f"a object 0-{k}"] + [f"a object 0-{k} variant {j}" for j in range(10)]
    with pytest.raises(ValueError, match="max_boxes"):
        FineHARDDataset(path, image_root, fake_preprocess(), max_boxes=-1)

    dataset = FineHARDDataset(path, image_root, fake_preprocess(), seed=5)
    choices = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        texts = dataset[2]["region_texts"]
        assert all(t in (f"a object 2-{k}", f"a object 2-{k} seen from the front") for k, t in enumerate(texts))
        choices.append(tuple(t.endswith("front") for t in texts))
        dataset.set_epoch(epoch)
        assert dataset[2]["region_texts"] == texts  # reproducible per (seed, epoch, index)
    counts = np.array(choices).sum(0)
    assert len(set(choices)) > 1 and (counts > 0).all() and (counts < 12).all()


# ---------------------------------------------------------------------------- collate
def _samples(tmp_path, image_root, regions_per_image, seed=0):
    items = [record(i, n) for i, n in enumerate(regions_per_image)]
    dataset = FineHARDDataset(write_jsonl(tmp_path / "c.jsonl", items), image_root, fake_preprocess(), seed=seed)
    return [dataset[i] for i in range(len(items))]


@pytest.mark.parametrize("regions_per_image", [[0, 0], [1], [0, 1], [3, 0, 2, 1]])
def test_collate_layout(tmp_path, image_root, regions_per_image):
    samples = _samples(tmp_path, image_root, regions_per_image)
    processor = fake_text_processor()
    batch = FineHARDCollator(processor)(samples)
    num_images, num_regions = len(samples), sum(regions_per_image)
    assert [(kind, padding) for _, kind, padding in processor.calls] == [("long", "longest"), ("short", "longest")]
    assert batch["pixel_values"].shape == (num_images, 3, 16, 16)
    assert decode(batch["long_input_ids"]) == [s["long_text"] for s in samples]

    # every short-path text slot decodes back to its text; the tokenized texts are unique
    expected_texts = [s["short_text"] for s in samples]
    expected_texts += [t for s in samples for t in s["region_texts"]]
    expected_groups = [(i, g) for i, s in enumerate(samples) for g in s["hard_negative_texts"]]
    expected_texts += [t for _, g in expected_groups for t in g]
    unique = decode(batch["short_input_ids"])
    assert len(set(unique)) == len(unique) == len(set(expected_texts))
    assert [unique[i] for i in batch["short_text_inverse"]] == expected_texts
    ranges = batch["short_text_ranges"]
    assert ranges == {
        "short": (0, num_images),
        "region": (num_images, num_images + num_regions),
        "hard_negative": (num_images + num_regions, len(expected_texts)),
    }
    assert len(expected_texts) - ranges["hard_negative"][0] == 11 * len(expected_groups)

    assert [b.shape[0] for b in batch["boxes"]] == regions_per_image
    assert batch["region_image_index"].tolist() == [i for i, n in enumerate(regions_per_image) for _ in range(n)]
    # each group belongs to the region whose short expression is its positive
    region_texts = expected_texts[ranges["region"][0] : ranges["region"][1]]
    region_short = [f"a object {i}-{k}" for i, n in enumerate(regions_per_image) for k in range(n)]
    groups = [expected_texts[j : j + 11] for j in range(ranges["hard_negative"][0], len(expected_texts), 11)]
    assert len(groups) == len(batch["hard_negative_region_index"])
    for group, region_index in zip(groups, batch["hard_negative_region_index"].tolist()):
        assert group[0] == region_short[region_index]
        assert region_texts[region_index].startswith(group[0])


def test_collate_deduplicates_repeated_texts(tmp_path, image_root):
    sample = _samples(tmp_path, image_root, [2])[0]
    batch = FineHARDCollator(fake_text_processor())([sample, copy.deepcopy(sample)])
    slots = len(batch["short_text_inverse"])
    assert slots == 2 * (1 + 2 + 11)  # the second image repeats every text of the first
    # unique: short caption, 2 region captions, 11 group texts; the group positive is
    # region 0's short expression, shared when region 0's caption is the short one
    shared = sample["region_texts"][0] == sample["hard_negative_texts"][0][0]
    assert batch["short_input_ids"].shape[0] == 1 + 2 + 11 - shared
    inverse = batch["short_text_inverse"]  # slots: 2 short, 2 + 2 region, 11 + 11 group texts
    assert inverse[0] == inverse[1]
    assert torch.equal(inverse[2:4], inverse[4:6]) and torch.equal(inverse[6:17], inverse[17:28])
