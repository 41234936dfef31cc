"""FG-CLIP 2's Chinese benchmarks (fgclip/eval/chinese.py) against the numbers the official scripts printed
(360CVGroup/FG-CLIP b1af1cd, fgclip2/eval/: long_trans_cn.py, coco_cn.py, flicker_cna.py,
in1k/laion_cn_box_cls_ddp.py; see tests/data/fgclip2_official/README.md) with the tiny official
checkpoint on the small files of tests/data/chinese, found by ``fgclip eval`` under that data root."""
import json
from pathlib import Path

import pytest
import torch

from fgclip import FGCLIP2Processor
from fgclip.eval.chinese import (
    grouped_recall,
    load_boxclass_cn,
    load_coco_cn,
    load_fgclip2_flickr30k_cna,
    load_long_cn,
    official_processing,
    paired_recall,
)
from fgclip.eval.cli import main
from fgclip.eval.common import DataError

DATA = Path(__file__).parent / "data"
ROOT = DATA / "chinese"
CHECKPOINT = DATA / "fgclip2_official"

# Printed by the official scripts (fractions, as they print them).
OFFICIAL = {
    "retrieval/long_cn/lit_cn": {"i2t_r1": 1 / 6, "t2i_r1": 1 / 6},
    "retrieval/long_cn/docci_cn": {"i2t_r1": 0.5, "t2i_r1": 0.25},
    "retrieval/coco_cn": {"i2t_r1": 0.08333333333333333, "i2t_r5": 0.16666666666666666, "i2t_r10": 0.4166666666666667,
                          "t2i_r1": 0.03333333333333333, "t2i_r5": 0.35, "t2i_r10": 0.8166666666666667},
    "retrieval/flickr30k_cna": {"i2t_r1": 0.1, "i2t_r5": 0.5, "i2t_r10": 0.9, "t2i_r1": 0.06, "t2i_r5": 0.48,
                                "t2i_r10": 1.0},
    "boxcls/boxclass_cn": {"top1": 1 / 9, "top5": 8 / 9},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = main(["--model", f"official={CHECKPOINT}", "--data-root", str(ROOT), "--output-dir", str(out),
                 "--datasets", "long_cn,coco_cn,flickr30k_cna,boxclass_cn", "--device", "cpu", "--workers", "0",
                 "--batch-size", "4", "--no-progress"])
    assert code == 0
    return json.loads((out / "results.json").read_text())["results"]["official"]


@pytest.mark.parametrize("label", sorted(OFFICIAL))
def test_fgclip_eval_gives_the_official_numbers(results, label):
    for metric, value in OFFICIAL[label].items():
        assert results[label][metric] == pytest.approx(value, abs=1e-12), metric


def test_sizes(results):
    assert (results["retrieval/coco_cn"]["num_images"], results["retrieval/coco_cn"]["num_texts"]) == (12, 60)
    assert (results["retrieval/flickr30k_cna"]["num_images"], results["retrieval/flickr30k_cna"]["num_texts"]) == (10, 50)
    assert results["boxcls/boxclass_cn"]["num_boxes"] == 9


# ---------------------------------------------------------------------------------------- readers
def test_long_cn_reader_pairs_lines_and_keeps_case(tmp_path):
    dataset = load_long_cn(ROOT / "long_cn" / "lit_cn.txt")
    assert len(dataset.images) == len(dataset.texts) == 6 and dataset.text_kind == "long"
    assert dataset.texts[2].endswith(" RED car") and Path(dataset.images[0]).name == "lit_0.jpg"
    bad = tmp_path / "bad.txt"
    bad.write_text("images/a.jpg\tone\ttwo\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt line 1: expected 'image<TAB>caption'"):
        load_long_cn(bad)


def test_coco_cn_reader_groups_by_image_and_skips_other_lines(tmp_path):
    dataset = load_coco_cn(ROOT / "coco_cn" / "coco_cn_test.txt", ROOT / "coco")
    assert len(dataset.images) == 12 and len(dataset.texts) == 60
    assert dataset.texts[1].endswith(" red car")  # lower-cased as coco_cn.py does ("RED car" in the file)
    assert Path(dataset.images[1]).parts[-2:] == ("train2014", "COCO_train2014_000000000002.jpg")
    assert "this line" not in " ".join(dataset.texts)
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000000001.jpg").write_bytes(b"")
    ann = tmp_path / "ann.txt"
    ann.write_text("".join(f"COCO_val2014_000000000001#zhm#{n}  说明{n}\n" for n in range(7)), encoding="utf-8")
    assert load_coco_cn(ann, tmp_path).texts == [f"说明{n}" for n in range(5)]  # the first five


def test_flickr30k_cna_reader_keeps_words_and_tags(tmp_path):
    dataset = load_fgclip2_flickr30k_cna(ROOT / "flickr30k_cna" / "flickr30k_cna_test.txt",
                                         ROOT / "flickr30k" / "flickr30k-images")
    assert len(dataset.images) == 10
    assert Path(dataset.images[0]).name == "1000.jpg"
    tagged = dataset.texts[2]
    assert ":n " in tagged and tagged == tagged.strip() and tagged.count(" ") == 6  # 7 words, tags kept
    bad = tmp_path / "bad.txt"
    bad.write_text("1000#zhb#0 no tab\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt line 1: expected '<image>#<n><TAB><caption>'"):
        load_fgclip2_flickr30k_cna(bad, ROOT / "flickr30k" / "flickr30k-images")


def test_boxclass_cn_reader_labels_by_category_position(tmp_path):
    dataset = load_boxclass_cn(ROOT / "BoxClass-CN" / "valid_category_data_total_zh.json", ROOT / "BoxClass-CN" / "images")
    assert dataset.classnames[1] == "红色 汽车" and dataset.labels[:4] == [0, 1, 2, 3]
    x, y, w, h = json.loads((ROOT / "BoxClass-CN" / "valid_category_data_total_zh.json").read_text())["annotations"][0]["bbox"]
    assert dataset.boxes[0] == pytest.approx((x, y, x + w, y + h))
    broken = tmp_path / "bad.json"
    broken.write_text(json.dumps({"categories": [{"id": 1, "name": "狗"}], "images": [{"id": 1, "file_name": "x.jpg"}],
                                  "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 2}]}))
    with pytest.raises(DataError, match=r"annotations\[0\]: category_id 2 - 1 is not a position"):
        load_boxclass_cn(broken, tmp_path)


# ---------------------------------------------------------------------------------------- scoring rules
def test_grouped_recall_uses_positions_five_per_image():
    # image 0 owns six captions in the file, but the scripts take texts 0-4 as image 0's and text 5 as image 1's
    similarity = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 9.0], [0.1, 0.2, 0.3, 0.4, 0.5, 2.0]])
    metrics = grouped_recall(similarity, ks=(1,))
    assert metrics["i2t_r1"] == 0.5  # image 0's best, text 5, is not its own by position; image 1's is
    assert metrics["t2i_r1"] == pytest.approx(5 / 6)  # text 5 ranks image 0 first, its positional image is 1


def test_paired_recall_by_hand():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.3, 0.7]])
    assert paired_recall(similarity) == {"i2t_r1": 2 / 3, "t2i_r1": 1 / 3}


def test_official_processing_sets_and_restores_the_processor():
    processor = FGCLIP2Processor.from_pretrained(CHECKPOINT)
    with official_processing(processor):
        assert processor.budget_scope == "image" and not processor.lowercase
        kept = processor(text=["RED car"])["input_ids"]
    assert processor.budget_scope == "call" and processor.lowercase
    assert not torch.equal(kept, processor(text=["RED car"])["input_ids"])
