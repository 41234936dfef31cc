"""Zero / CCMB downstream sets as released (tests/data/zero: the released file names and JSON-lines
fields): the readers, their errors, R2D2's metrics against values the authors' functions printed
(yuxie11/R2D2 c7127fa: itm_eval and compute_cross_score of train_r2d2_retrieval.py, Lite.eval of
train_r2d2_matching.py), and the five sets through `fgclip eval` (Flickr30k-CNA as flickr30k_cna_r2d2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.encoders import load_encoder
from fgclip.eval import FeatureExtractor
from fgclip.eval.cli import main as eval_main
from fgclip.eval.common import DataError, ImageRequest
from fgclip.eval.chinese import grouped_recall
from fgclip.eval.matching import matching_auc
from fgclip.eval.zero import (
    load_zero_flickr30k_cna,
    load_zero_matching,
    load_zero_retrieval,
    r2d2_cross_scores,
    r2d2_recall,
    r2d2_reranked_recall,
)
from fgclip.rerank import CrossEncoderReranker, CrossEncoderRerankerConfig
from fgclip.testing import tiny_config

DATA = Path(__file__).resolve().parent / "data" / "zero"
ZERO_IMAGES = ("4f2a91c0.jpg", "77b0e3d1.jpg", "0c9d5e22.jpg")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The released folders: zero/{ICR,IQR,ICM,IQM}/val and zero/IQR_IQM_ICR_ICM_images (images drawn here)."""
    root = tmp_path_factory.mktemp("zero_layout")
    shutil.copytree(DATA, root / "zero")
    rng = np.random.default_rng(0)
    (root / "zero/IQR_IQM_ICR_ICM_images").mkdir()
    for index, name in enumerate(ZERO_IMAGES):
        Image.fromarray(rng.integers(0, 256, (20 + 6 * index, 28, 3), dtype=np.uint8)).save(
            root / "zero/IQR_IQM_ICR_ICM_images" / name)
    return root


def test_readers_follow_the_released_layout(layout):
    images = layout / "zero" / "IQR_IQM_ICR_ICM_images"
    icr = load_zero_retrieval(layout / "zero/ICR/val/long_itr_val.json", images, "long")
    assert [Path(p).name for p in icr.images] == list(ZERO_IMAGES)
    assert icr.text_to_image == [0, 1, 0, 2, 1]  # grouped by file name, whatever the image_path folder
    assert icr.texts[2] == "窗台上的橘猫眯着眼睛，阳光照在它的毛上" and icr.text_kind == "long"
    iqr = load_zero_retrieval(layout / "zero/IQR/val/short_itr_val.json", images, "short")
    assert iqr.text_to_image == [0, 1, 2, 1] and iqr.texts[3] == "海边 跑车"
    icm = load_zero_matching(layout / "zero/ICM/val/long_itm_val.json", images, "long")
    assert icm.pair_image == [0, 0, 1, 1, 2, 2] and icm.labels == [1, 0, 1, 0, 1, 0]
    iqm = load_zero_matching(layout / "zero/IQM/val/short_itm_val.json", images, "short")
    assert iqm.pair_image == [0, 0, 1, 2, 2] and iqm.labels == [1, 0, 1, 1, 0] and iqm.texts[1] == "跑车"


def test_retrieval_reader_groups_by_the_authors_image_key(layout, tmp_path):
    """icr_dataset.py / iqr_dataset.py key an image by its base name without the last four characters:
    a ``.png`` line of a ``.jpg`` image joins it (and the first-seen file is the one read)."""
    path = tmp_path / "long_itr_val.json"
    records = [{"text": "橘猫", "image_path": "a/4f2a91c0.jpg"}, {"text": "跑车", "image_path": "b/77b0e3d1.jpg"},
               {"text": "窗台上的猫", "image_path": "c/4f2a91c0.png"}]
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    dataset = load_zero_retrieval(path, layout / "zero" / "IQR_IQM_ICR_ICM_images", "long")
    assert [Path(p).name for p in dataset.images] == ["4f2a91c0.jpg", "77b0e3d1.jpg"]
    assert dataset.text_to_image == [0, 1, 0]


FLICKR30K_CNA = "1000092795#0\t两个年轻人在院子里\n2354456107#0\t一只狗在草地上跑\n1000092795#1\t院子里的两个男人\n" \
                "2354456107#1\t草地上的狗\n1000092795#2\t年轻人站在院子里\n"


FLICKR30K_CNA_TEXTS = ["两个年轻人在院子里", "一只狗在草地上跑", "院子里的两个男人", "草地上的狗", "年轻人站在院子里"]


def write_flickr30k_cna(directory: Path) -> tuple[Path, Path]:
    """A Flickr30k-CNA token file (two images, three and two captions) and its two images."""
    images = directory / "flickr30k-images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name in ("1000092795", "2354456107"):
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(images / f"{name}.jpg")
    (directory / "flickr30k_cna_test.txt").write_text(FLICKR30K_CNA, encoding="utf-8")
    return directory / "flickr30k_cna_test.txt", images


def test_flickr30k_cna_reader_is_the_authors_retrieval_eval(tmp_path):
    """flickr30k_cna_retrieval_eval (yuxie11/R2D2 c7127fa, data/flickr30k_cna_dataset.py) read FLICKR30K_CNA
    and printed image ['1000092795.jpg', '2354456107.jpg'], txt2img {0: 0, 1: 1, 2: 0, 3: 1, 4: 0}, the
    texts as written."""
    path, images = write_flickr30k_cna(tmp_path)
    dataset = load_zero_flickr30k_cna(path, images)
    assert [Path(p).name for p in dataset.images] == ["1000092795.jpg", "2354456107.jpg"]
    assert dataset.text_to_image == [0, 1, 0, 1, 0]
    assert dataset.texts == FLICKR30K_CNA_TEXTS and dataset.text_kind == "short"
    (tmp_path / "bad.txt").write_text("1000092795#0\t院子\n1000092795#1 no tab\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.txt line 2: expected"):
        load_zero_flickr30k_cna(tmp_path / "bad.txt", images)


@pytest.mark.parametrize("line, message", [
    ('{"image_path": "x/4f2a91c0.jpg", "label": 1}', "line 2: missing key 'text'"),
    ('{"text": "猫", "image_path": "x/4f2a91c0.jpg", "label": 2}', "line 2: 'label' must be 0 or 1, got 2"),
    ('{"text": "猫", "image_path": "x/4f2a91c0.jpg", "label": true}', "line 2: 'label' must be 0 or 1"),
    ('{"text": "猫", "image_path": "x/missing.jpg", "label": 0}', "line 2: image file not found"),
    ('{"text": "猫", "label": 0}', "line 2: missing key 'image_path'"),
])
def test_matching_reader_errors_name_file_line_and_field(layout, tmp_path, line, message):
    path = tmp_path / "long_itm_val.json"
    path.write_text('{"text": "橘猫", "image_path": "a/4f2a91c0.jpg", "label": 1}\n' + line + "\n")
    with pytest.raises(DataError, match=f"{path} {message}"):
        load_zero_matching(path, layout / "zero" / "IQR_IQM_ICR_ICM_images", "long")


# ---------------------------------------------------------------------------------------- R2D2's metrics
# Expected values: printed by the authors' own functions (repo yuxie11/R2D2, commit c7127fa), extracted
# verbatim in a scratch script and run on the inputs below: train_r2d2_retrieval.py `itm_eval` (percentages)
# and `compute_cross_score` (with a stand-in model whose two heads give logits [0, table[image, text]]),
# train_r2d2_matching.py `Lite.eval` (sklearn roc_auc_score). numpy 1.23.5 (the sort of the authors' time;
# numpy 2.4.6 with AVX-512 prints the same except where noted), torch 2.14, scikit-learn 1.9.1.
def authors_percent(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Our fractions as the authors' keys and percentages (txt = image-to-text, img = text-to-image)."""
    names = {"txt": "i2t", "img": "t2i"}
    result = {f"{side}_r{k}": 100 * metrics[f"{prefix}{names[side]}_r{k}"] for side in names for k in (1, 5, 10)}
    return {**result, "r_mean": 100 * metrics[f"{prefix}mean_recall"]}


def five_captions() -> tuple[torch.Tensor, torch.Tensor]:
    """12 images with 5 captions each (Flickr30k-CNA's count), no ties."""
    rng = np.random.default_rng(7)
    txt2img = np.repeat(np.arange(12), 5)
    sims = (rng.normal(size=(12, 60)) + 1.2 * (txt2img[None, :] == np.arange(12)[:, None])).astype(np.float32)
    return torch.tensor(sims), torch.tensor(txt2img)


def test_recall_of_five_captions_per_image_is_the_authors_itm_eval():
    sims, txt2img = five_captions()
    printed = {"txt_r1": 58.333333333333336, "txt_r5": 91.66666666666667, "txt_r10": 100.0,
               "img_r1": 38.333333333333336, "img_r5": 90.0, "img_r10": 100.0, "r_mean": 79.72222222222223}
    assert authors_percent(r2d2_recall(sims, sims.T, txt2img)) == pytest.approx(printed)
    # fgclip.eval.chinese's flickr30k_cna (FG-CLIP 2's positional scoring) agrees on tie-free scores
    grouped = grouped_recall(sims)
    assert {f"{side}_r{k}": 100 * grouped[f"{direction}_r{k}"] for side, direction in (("txt", "i2t"), ("img", "t2i"))
            for k in (1, 5, 10)} == pytest.approx({key: value for key, value in printed.items() if key != "r_mean"})


def test_ties_rank_the_later_candidate_first_as_the_authors_argsort():
    txt2img = torch.tensor([0, 0, 1, 1, 0, 2, 2])  # image 0 owns texts 0, 1, 4; image 1 texts 2, 3; image 2 texts 5, 6
    sims = torch.tensor([
        [0.50, 0.25, 0.00, 0.00, 0.25, 0.50, 0.00],  # own text 0 ties with text 5 at the top: 5 first, a miss at 1
        [0.00, 0.75, 0.00, 0.75, 0.00, 0.00, 0.25],  # own text 3 ties with text 1: 3 first, a hit
        [0.25, 0.50, 0.00, 0.50, 0.00, 0.25, 0.25],  # own texts 5, 6 tie with text 0 below texts 1, 3
    ])  # text 2's column ties all three images: image 2, 1, 0 in that order
    printed = {"txt_r1": 33.333333333333336, "txt_r5": 100.0, "txt_r10": 100.0,
               "img_r1": 57.142857142857146, "img_r5": 100.0, "img_r10": 100.0, "r_mean": 81.74603174603175}
    assert authors_percent(r2d2_recall(sims, sims.T, txt2img)) == pytest.approx(printed)


def rerank_case():
    """12 images, 15 texts (images 0..2 own two), dual scores, and the pair scorer of R2D2's two heads."""
    rng = np.random.default_rng(11)
    txt2img = np.array(list(range(12)) + [0, 1, 2])
    own = txt2img[None, :] == np.arange(12)[:, None]
    sims = (0.3 * rng.normal(size=(12, 15)) + 0.3 * own).astype(np.float32)
    text_logits = torch.tensor((rng.normal(size=(12, 15)) + 2.0 * own).astype(np.float32))
    image_logits = torch.tensor((rng.normal(size=(12, 15)) + 2.0 * own).astype(np.float32))

    def match_probability(logits, images, texts):
        z = logits[images, texts]
        return torch.softmax(torch.stack([torch.zeros_like(z), z], dim=-1), dim=-1)[:, 1]

    def pair_score(images, texts):  # the mean of the two heads' matching probabilities, as compute_cross_score
        return (match_probability(text_logits, images, texts) + match_probability(image_logits, images, texts)) / 2

    return torch.tensor(sims), torch.tensor(txt2img), pair_score


@pytest.mark.parametrize("top_k, printed", [
    # top_k 4: -100 fills ranks 5..10, their ties ordered later column first (numpy 2.4.6 with AVX-512 orders
    # those 15-column ties otherwise and prints txt_r5 58.33, txt_r10 91.67)
    (4, {"txt_r1": 50.0, "txt_r5": 66.66666666666667, "txt_r10": 83.33333333333333, "img_r1": 46.666666666666664,
         "img_r5": 66.66666666666667, "img_r10": 86.66666666666667, "r_mean": 66.66666666666667}),
    (12, {"txt_r1": 66.66666666666667, "txt_r5": 100.0, "txt_r10": 100.0, "img_r1": 53.333333333333336,
          "img_r5": 100.0, "img_r10": 100.0, "r_mean": 86.66666666666667}),
])
def test_reranked_recall_is_the_authors_cross_score(top_k, printed):
    sims, txt2img, pair_score = rerank_case()
    dual = {"txt_r1": 41.666666666666664, "txt_r5": 75.0, "txt_r10": 100.0, "img_r1": 20.0,
            "img_r5": 66.66666666666667, "img_r10": 100.0, "r_mean": 67.22222222222223}
    assert authors_percent(r2d2_recall(sims, sims.T, txt2img)) == pytest.approx(dual)
    ours = r2d2_reranked_recall(pair_score, sims, txt2img, top_k)
    assert authors_percent(ours, prefix="rerank_") == pytest.approx(printed)
    cross = r2d2_cross_scores(pair_score, sims, top_k)
    assert ((cross == -100.0).sum(dim=1) == 15 - top_k).all()
    assert cross[0, 12] == pytest.approx(pair_score(torch.tensor([0]), torch.tensor([12])).item() + sims[0, 12].item())


def test_matching_auc_is_the_authors_roc_auc_with_tied_scores():
    labels = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    scores = torch.tensor([0.9, 0.9, 0.7, 0.5, 0.5, 0.2, 0.5, 0.1, 0.3, 0.7])
    assert matching_auc(labels, scores) == pytest.approx(0.6000000000000001)  # Lite.eval printed


# ---------------------------------------------------------------------------------------- fgclip eval
def test_fgclip_eval_runs_the_released_sets(layout, tmp_path):
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config())
    model.save_pretrained(tmp_path / "fgclip")
    FGCLIPProcessor.for_config(model.config).save_pretrained(tmp_path / "fgclip")
    torch.manual_seed(1)
    CrossEncoderReranker(CrossEncoderRerankerConfig(image_width=32, text_width=32, hidden_size=16,
                                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                                    dropout=0.0)).save_pretrained(tmp_path / "reranker")
    names = ["zero_icr", "zero_iqr", "zero_icm", "zero_iqm"]
    assert eval_main(["--model", str(tmp_path / "fgclip"), "--reranker", str(tmp_path / "reranker"),
                      "--datasets", ",".join(names), "--data-root", str(layout), "--output-dir", str(tmp_path / "out"),
                      "--device", "cpu", "--workers", "0", "--no-progress", "--rerank-top-k", "10"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["fgclip"]
    assert set(results) == {"retrieval/zero_icr", "retrieval/zero_iqr", "matching/zero_icm", "matching/zero_iqm"}
    for label in ("retrieval/zero_icr", "retrieval/zero_iqr"):
        assert {"i2t_r1", "t2i_r10", "mean_recall", "rerank_mean_recall"} <= set(results[label])
    assert results["retrieval/zero_icr"]["num_texts"] == 5 and results["retrieval/zero_iqr"]["num_images"] == 3

    encoder = load_encoder(tmp_path / "fgclip")
    extractor = FeatureExtractor(encoder, batch_size=4, num_workers=0, progress=False)
    icm = load_zero_matching(layout / "zero/ICM/val/long_itm_val.json", layout / "zero/IQR_IQM_ICR_ICM_images", "long")
    images = extractor.encode_images([ImageRequest(path) for path in icm.images])
    texts = extractor.encode_texts(icm.texts, "long")
    cosine = (images[icm.pair_image] * texts).sum(-1).numpy()
    assert results["matching/zero_icm"]["auc"] == pytest.approx(roc_auc_score(icm.labels, cosine))
    assert 0.0 <= results["matching/zero_iqm"]["rerank_auc"] <= 1.0


def test_fgclip_eval_scores_flickr30k_cna_as_r2d2(tmp_path):
    path, images = write_flickr30k_cna(tmp_path)
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config())
    model.save_pretrained(tmp_path / "fgclip")
    FGCLIPProcessor.for_config(model.config).save_pretrained(tmp_path / "fgclip")
    assert eval_main(["--model", str(tmp_path / "fgclip"), "--datasets", "flickr30k_cna_r2d2",
                      "--path", f"flickr30k_cna_r2d2.ann={path}", "--path", f"flickr30k_cna_r2d2.images={images}",
                      "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--workers", "0",
                      "--no-progress"]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["fgclip"]
    result = result["retrieval/flickr30k_cna_r2d2"]
    extractor = FeatureExtractor(load_encoder(tmp_path / "fgclip"), num_workers=0, progress=False)
    dataset = load_zero_flickr30k_cna(path, images)
    similarity = extractor.encode_images([ImageRequest(p) for p in dataset.images]) @ \
        extractor.encode_texts(dataset.texts, "short").T
    expected = r2d2_recall(similarity, similarity.T, torch.tensor(dataset.text_to_image))
    assert {key: result[key] for key in expected} == pytest.approx(expected)
    assert result["num_images"] == 2 and result["num_texts"] == 5
