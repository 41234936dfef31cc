"""Zero / CCMB downstream sets as released (tests/data/zero: the released file names and JSON-lines
fields): the readers, their errors, R2D2's retrieval metrics (itm_eval, compute_cross_score of
yuxie11/R2D2 train_r2d2_retrieval.py, c7127fa) against a loop written like the authors', and the
four sets through `fgclip eval` (Flickr30k-CNA is fgclip.eval.chinese's)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.encoders import load_encoder
from fgclip.eval import FeatureExtractor
from fgclip.eval.cli import main as eval_main
from fgclip.eval.common import DataError, ImageRequest
from fgclip.eval.metrics import retrieval_recall
from fgclip.eval.zero import (
    load_zero_matching,
    load_zero_retrieval,
    r2d2_reranked_recall,
    with_mean_recall,
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
def official_itm_eval(scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img: list[int]) -> dict[str, float]:
    """The loops of R2D2's itm_eval (descending argsort, first hit among the top 10), as fractions."""
    img2txt = {image: [t for t, owner in enumerate(txt2img) if owner == image] for image in set(txt2img)}
    hits = {name: {k: 0 for k in (1, 5, 10)} for name in ("i2t", "t2i")}
    for index, score in enumerate(scores_i2t):
        order = np.argsort(score)[::-1]
        first = next((k for k in range(10) if order[k] in img2txt[index]), None)
        for k in (1, 5, 10):
            hits["i2t"][k] += first is not None and first < k
    for index, score in enumerate(scores_t2i):
        order = np.argsort(score)[::-1]
        first = next((k for k in range(10) if order[k] == txt2img[index]), None)
        for k in (1, 5, 10):
            hits["t2i"][k] += first is not None and first < k
    result = {f"i2t_r{k}": hits["i2t"][k] / len(scores_i2t) for k in (1, 5, 10)}
    result.update({f"t2i_r{k}": hits["t2i"][k] / len(scores_t2i) for k in (1, 5, 10)})
    result["mean_recall"] = ((sum(result[f"i2t_r{k}"] for k in (1, 5, 10)) / 3)
                             + (sum(result[f"t2i_r{k}"] for k in (1, 5, 10)) / 3)) / 2
    return result


def test_retrieval_metrics_match_the_official_loops():
    rng = np.random.default_rng(1)
    txt2img = list(range(14)) + rng.integers(0, 14, 11).tolist()  # every image owns a text, some two or more
    images = F.normalize(torch.tensor(rng.normal(size=(14, 8))), dim=-1)
    texts = F.normalize(torch.tensor(rng.normal(size=(len(txt2img), 8))) + 0.8 * images[txt2img], dim=-1)
    ours = with_mean_recall(retrieval_recall(images, texts, torch.tensor(txt2img)))
    similarity = (images @ texts.T).numpy()
    expected = official_itm_eval(similarity, similarity.T, txt2img)
    assert ours == pytest.approx(expected)
    assert 0 < expected["mean_recall"] < 1


@pytest.mark.parametrize("top_k", [10, 12])
def test_reranked_recall_is_the_official_cross_score(top_k):
    rng = np.random.default_rng(2)
    num_images, txt2img = 13, [i % 13 for i in range(17)]
    torch.manual_seed(0)
    reranker = CrossEncoderReranker(CrossEncoderRerankerConfig(
        image_width=8, text_width=6, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, dropout=0.0)).eval()
    image_tokens = [torch.tensor(rng.normal(size=(3, 8)), dtype=torch.float32) for _ in range(num_images)]
    text_tokens = [torch.tensor(rng.normal(size=(2 + i % 3, 6)), dtype=torch.float32) for i in range(len(txt2img))]
    similarity = torch.tensor(rng.uniform(-1, 1, size=(num_images, len(txt2img))), dtype=torch.float32)
    ours = with_mean_recall(r2d2_reranked_recall(reranker, similarity, image_tokens, text_tokens,
                                                 torch.tensor(txt2img), top_k), prefix="rerank_")

    def cross(image, text):  # the mean of the two matching probabilities of one pair
        with torch.no_grad():
            return reranker(image_tokens[image][None], torch.ones(1, 3), text_tokens[text][None],
                            torch.ones(1, len(text_tokens[text]))).scores.item()

    scores_i2t = np.full(similarity.shape, -100.0)  # compute_cross_score: -100 outside each query's top_k
    for image in range(num_images):
        for text in similarity[image].topk(top_k).indices.tolist():
            scores_i2t[image, text] = cross(image, text) + similarity[image, text].item()
    scores_t2i = np.full(similarity.T.shape, -100.0)
    for text in range(len(txt2img)):
        for image in similarity[:, text].topk(top_k).indices.tolist():
            scores_t2i[text, image] = cross(image, text) + similarity[image, text].item()
    expected = official_itm_eval(scores_i2t, scores_t2i, txt2img)
    assert ours == pytest.approx({f"rerank_{key}": value for key, value in expected.items()})
    with pytest.raises(ValueError, match="needs --rerank-top-k >= 10"):
        r2d2_reranked_recall(reranker, similarity, image_tokens, text_tokens, torch.tensor(txt2img), 5)


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
