"""Image-text matching (ICM / IQM style): ROC AUC against a brute-force pair count, with and without
a re-ranker, through the runner's layout, and clear errors for malformed files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.encoders import load_encoder
from fgclip.eval import FeatureExtractor
from fgclip.eval.common import DataError
from fgclip.eval.matching import evaluate_matching, load_matching_tsv
from fgclip.eval.runner import RunConfig, run_evaluation
from fgclip.rerank import CrossEncoderReranker, CrossEncoderRerankerConfig
from fgclip.testing import tiny_config

LINES = ["0.png\ta photo of thing 0\t1", "0.png\ta photo of thing 3\t0", "1.png\tthing 1 seen from afar\t1",
         "2.png\ta photo of thing 2\t1", "2.png\ta photo of thing 0\t0", "1.png\tthing 2 up close\t0"]


def brute_force_auc(scores: list[float], labels: list[int]) -> float:
    """P(score of a matching pair > score of a non-matching one), ties counting one half."""
    positives = [s for s, label in zip(scores, labels) if label == 1]
    negatives = [s for s, label in zip(scores, labels) if label == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("matching")
    rng = np.random.default_rng(0)
    (root / "data" / "matching").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + 4 * index, 28, 3), dtype=np.uint8)).save(
            root / "data" / "matching" / f"{index}.png")
    (root / "data" / "matching" / "pairs.tsv").write_text("\n".join(LINES) + "\n")
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config())
    model.save_pretrained(root / "model")
    FGCLIPProcessor.for_config(model.config).save_pretrained(root / "model")
    return root


def test_auc_matches_brute_force_with_and_without_a_reranker(root):
    evaluated = load_encoder(root / "model")
    dataset = load_matching_tsv(root / "data" / "matching" / "pairs.tsv")
    torch.manual_seed(3)
    reranker = CrossEncoderReranker(CrossEncoderRerankerConfig(image_width=32, text_width=32, hidden_size=16,
                                                               num_hidden_layers=1, num_attention_heads=2,
                                                               intermediate_size=32, dropout=0.0)).eval()
    result = evaluate_matching(FeatureExtractor(evaluated, batch_size=2, num_workers=0, progress=False), dataset,
                               reranker)
    model, processor = evaluated.model, evaluated.processor
    cosines, rerank_scores = [], []
    with torch.no_grad():
        for line in LINES:
            image, text, _ = line.split("\t")
            pixels = processor(images=str(root / "data" / "matching" / image))["pixel_values"]
            ids = processor(text=[text], text_kind="short")["input_ids"]
            cosines.append(float(F.cosine_similarity(model.get_image_features(pixels), model.get_text_features(ids))))
            images, texts = model.get_image_tokens(pixels), model.get_text_tokens(ids, text_kind="short")
            keep = texts.mask[0].bool()
            rerank_scores.append(reranker(images.tokens, images.mask, texts.tokens[:, keep],
                                          torch.ones(1, int(keep.sum()))).scores.item())
    labels = [int(line.split("\t")[2]) for line in LINES]
    assert result["auc"] == pytest.approx(brute_force_auc(cosines, labels))
    assert result["rerank_auc"] == pytest.approx(brute_force_auc(rerank_scores, labels))
    assert (result["num_pairs"], result["num_images"]) == (6, 3)


def test_runner_finds_matching_files(root, tmp_path):
    report = run_evaluation([("fgclip", load_encoder(root / "model"), {})],
                            RunConfig(data_root=str(root / "data"), output_dir=str(tmp_path), tasks=["matching"],
                                      num_workers=0, progress=False))
    assert set(report["results"]["fgclip"]) == {"matching/pairs"}
    assert 0.0 <= report["results"]["fgclip"]["matching/pairs"]["auc"] <= 1.0


def test_malformed_matching_files_name_file_and_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a.png\ta cat\t1\na.png\ta dog\tyes\n")
    with pytest.raises(DataError, match=rf"{bad} line 2: label: expected 0 or 1, got 'yes'"):
        load_matching_tsv(bad)
    bad.write_text("a.png\ta cat\t1\na.png\ta dog\n")
    with pytest.raises(DataError, match=rf"{bad} line 2: expected 'image<TAB>text<TAB>label'"):
        load_matching_tsv(bad)
    bad.write_text("a.png\ta cat\t1\n")
    with pytest.raises(DataError, match="needs both matching"):
        load_matching_tsv(bad)
