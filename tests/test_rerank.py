"""R2D2-style re-ranking: hard-negative sampling, top-k re-ranking and recall against brute force,
the cross encoders' padding invariance and checkpoints, the token APIs against the global
features, the training step's loss by hand, re-ranked retrieval through the evaluation and a
re-ranker trained with `train()` (resumed mid-run) and evaluated with `fgclip eval --reranker`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

from fgclip import FGCLIP2Model, FGCLIP2Processor, FGCLIPModel, FGCLIPProcessor
from fgclip.data import FineHARDCollator, FineHARDDataset
from fgclip.data.shapes import write_shapes_dataset
from fgclip.encoders import load_encoder
from fgclip.eval import FeatureExtractor
from fgclip.eval.cli import main as eval_main
from fgclip.eval.retrieval import evaluate_retrieval, load_tsv
from fgclip.rerank import (
    CrossEncoderReranker,
    CrossEncoderRerankerConfig,
    RerankerForTraining,
    ranked_recall,
    rerank_topk,
    sample_hard_negatives,
)
from fgclip.testing import tiny_config, tiny_fgclip2_config, tiny_word_tokenizer
from fgclip.training import load_config, train
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[1]


def tiny_reranker(image_width=32, text_width=32, seed=0) -> CrossEncoderReranker:
    torch.manual_seed(seed)
    config = CrossEncoderRerankerConfig(image_width=image_width, text_width=text_width, hidden_size=16,
                                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, dropout=0.0)
    return CrossEncoderReranker(config).eval()


# ---------------------------------------------------------------------------------------- sampling, ranking
def test_hard_negatives_exclude_the_positive_and_follow_the_similarity():
    generator = torch.Generator().manual_seed(0)
    drawn = sample_hard_negatives(torch.randn(6, 6), 3, generator)
    assert drawn.shape == (6, 3)
    assert all(row not in negatives and len(set(negatives)) == 3 for row, negatives in enumerate(drawn.tolist()))
    peaked = torch.full((4, 4), -30.0)
    peaked[torch.arange(4), (torch.arange(4) + 1) % 4] = 30.0  # one confusable column per row
    for _ in range(5):
        assert sample_hard_negatives(peaked, 1, generator)[:, 0].tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="cannot draw 4 negatives per row from a batch of 4"):
        sample_hard_negatives(peaked, 4)


def test_rerank_topk_and_recall_match_brute_force():
    rng = np.random.default_rng(0)
    similarity, hidden = torch.tensor(rng.normal(size=(7, 9))), torch.tensor(rng.normal(size=(7, 9)))
    ranked = rerank_topk(similarity, 4, lambda q, c: hidden[q, c], pairs_per_call=5)
    for query in range(7):
        top = sorted(range(9), key=lambda c: -similarity[query, c])[:4]
        assert ranked[query].tolist() == sorted(top, key=lambda c: -hidden[query, c])
    positives = torch.tensor(rng.random((7, 9)) < 0.2)
    expected = [np.mean([bool(positives[q, ranked[q, :k]].any()) for q in range(7)]) for k in (1, 3)]
    assert ranked_recall(ranked, positives, (1, 3)) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------- cross encoders
def test_padding_does_not_change_scores_and_checkpoints_round_trip(tmp_path):
    reranker = tiny_reranker(image_width=24, text_width=20)
    images, texts = torch.randn(3, 5, 24), torch.randn(3, 4, 20)
    with torch.no_grad():
        plain = reranker(images, torch.ones(3, 5), texts, torch.ones(3, 4)).scores
        padded = reranker(F.pad(images, (0, 0, 0, 3), value=7.0), torch.cat([torch.ones(3, 5), torch.zeros(3, 3)], 1),
                          F.pad(texts, (0, 0, 0, 2), value=-3.0), torch.cat([torch.ones(3, 4), torch.zeros(3, 2)], 1))
    assert_close_to_reference(padded.scores, plain, terms=tower_terms(reranker.config, 5 + 4))
    assert bool(((plain > 0) & (plain < 1)).all())
    reranker.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CrossEncoderReranker)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, torch.ones(3, 5), texts, torch.ones(3, 4)).scores, plain)


def test_token_features_carry_the_global_embeddings():
    torch.manual_seed(0)
    model, processor = FGCLIPModel(tiny_config()).eval(), FGCLIPProcessor.for_config(tiny_config())
    pixels = torch.randn(2, 3, 32, 32)
    ids = processor(text=["a red car", "a blue bird on the grass"], text_kind="long")["input_ids"]
    with torch.no_grad():
        images, texts = model.get_image_tokens(pixels), model.get_text_tokens(ids, text_kind="long")
        torch.testing.assert_close(images.embeds, model.get_image_features(pixels))
        torch.testing.assert_close(texts.embeds, model.get_text_features(ids, text_kind="long"))
    assert texts.mask.sum(1).tolist() == [
        len(processor(text=[text], text_kind="short", padding="longest")["input_ids"][0])
        for text in ("a red car", "a blue bird on the grass")]
    model2 = FGCLIP2Model(tiny_fgclip2_config()).eval()
    processor2 = FGCLIP2Processor.for_config(model2.config, tiny_word_tokenizer("a red car".split()))
    batch = processor2(images=[Image.new("RGB", (20, 12))])
    encoded = processor2(text=["a red car"], text_kind="region")
    with torch.no_grad():
        torch.testing.assert_close(model2.get_image_tokens(**batch).embeds, model2.get_image_features(**batch))
        torch.testing.assert_close(model2.get_text_tokens(**encoded).embeds, model2.get_text_features(**encoded))


# ---------------------------------------------------------------------------------------- training step
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank_shapes")
    write_shapes_dataset(root, seed=4, num_train=12, num_test=1, image_size=32)
    return root


def test_training_step_loss_by_hand(shapes):
    torch.manual_seed(0)
    dual = FGCLIPModel(tiny_config())
    processor = FGCLIPProcessor.for_config(dual.config)
    samples = [FineHARDDataset(shapes / "train.jsonl", shapes, processor)[i] for i in range(5)]
    batch = FineHARDCollator(processor)(samples)
    step = RerankerForTraining(dual, tiny_reranker(), text_kind="short", negatives=2, seed=9)
    generator = step._generator()
    output = step(**batch)
    output["loss"].backward()
    assert int(step.steps) == 1
    assert all(p.grad is None for p in dual.parameters()) and all(p.grad is not None for p in step.reranker.parameters())
    with torch.no_grad():
        images = dual.get_image_tokens(batch["pixel_values"])
        texts = dual.get_text_tokens(processor(text=[s["short_text"] for s in samples], text_kind="short")["input_ids"],
                                     text_kind="short")
        similarity = F.normalize(images.embeds, dim=-1) @ F.normalize(texts.embeds, dim=-1).T
        hard_texts = sample_hard_negatives(similarity, 2, generator)
        hard_images = sample_hard_negatives(similarity.T, 2, generator)
        pairs = [(i, i, 1) for i in range(5)] + [(i, int(t), 0) for i in range(5) for t in hard_texts[i]] + \
            [(int(i), t, 0) for t in range(5) for i in hard_images[t]]
        losses = {"text_queries": [], "image_queries": []}
        for image, text, label in pairs:  # one pair at a time, real tokens only
            keep = texts.mask[text].bool()
            scored = step.reranker(images.tokens[image : image + 1], images.mask[image : image + 1],
                                   texts.tokens[text : text + 1, keep], torch.ones(1, int(keep.sum())))
            losses["text_queries"].append(F.cross_entropy(scored.text_query_logits, torch.tensor([label])))
            losses["image_queries"].append(F.cross_entropy(scored.image_query_logits, torch.tensor([label])))
    expected = sum(torch.stack(values).mean() for values in losses.values())
    # the cross encoder over a padded batch or one pair of image and text tokens
    terms = tower_terms(step.reranker.config, images.tokens.shape[1] + texts.tokens.shape[1])
    assert_close_to_reference(output["loss"], expected, terms=terms)


# ---------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def retrieval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank_retrieval")
    rng = np.random.default_rng(3)
    lines = []
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (24 + 4 * index, 32, 3), dtype=np.uint8)).save(root / f"{index}.png")
        lines += [f"{index}.png\ta photo of thing {index}", f"{index}.png\tthing {index} seen from afar"][: 1 + index % 2]
    (root / "set.tsv").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config())
    model.save_pretrained(root / "fgclip")
    FGCLIPProcessor.for_config(model.config).save_pretrained(root / "fgclip")
    return root


@pytest.mark.parametrize("top_k", [3, 128])
def test_reranked_retrieval_matches_brute_force(retrieval_data, top_k):
    evaluated = load_encoder(retrieval_data / "fgclip")
    reranker = tiny_reranker(seed=2)
    dataset = load_tsv(retrieval_data / "set.tsv", text_kind="short")
    result = evaluate_retrieval(FeatureExtractor(evaluated, batch_size=4, num_workers=0, progress=False), dataset,
                                reranker, top_k)
    model, processor = evaluated.model, evaluated.processor
    with torch.no_grad():
        pixels = processor(images=dataset.images)["pixel_values"]
        ids = processor(text=dataset.texts, text_kind="short")["input_ids"]
        images, texts = model.get_image_tokens(pixels), model.get_text_tokens(ids, text_kind="short")
        similarity = F.normalize(images.embeds, dim=-1) @ F.normalize(texts.embeds, dim=-1).T

        def score(image, text):
            keep = texts.mask[text].bool()
            return reranker(images.tokens[image : image + 1], images.mask[image : image + 1],
                            texts.tokens[text : text + 1, keep], torch.ones(1, int(keep.sum()))).scores.item()

        owners = dataset.text_to_image
        for direction, count, others in (("i2t", len(images.tokens), len(owners)), ("t2i", len(owners), 6)):
            hits = {k: 0 for k in (1, 5, 10)}
            for query in range(count):
                row = similarity[query] if direction == "i2t" else similarity[:, query]
                order = sorted(range(others), key=lambda c: -row[c])
                head = sorted(order[:top_k], key=lambda c: -(score(query, c) if direction == "i2t" else score(c, query)))
                full = head + order[top_k:]
                is_hit = (lambda c: owners[c] == query) if direction == "i2t" else (lambda c: c == owners[query])
                for k in hits:
                    hits[k] += any(is_hit(c) for c in full[:k])
            for k in hits:
                assert result[f"rerank_{direction}_r{k}"] == pytest.approx(hits[k] / count), (direction, k)


# ---------------------------------------------------------------------------------------- train() and fgclip eval
def test_train_resume_and_evaluate_a_reranker(retrieval_data, shapes, tmp_path):
    recipe = REPO / "configs" / "fgclip" / "shapes_stage2.yaml"

    def config(out: Path):
        return load_config(recipe, [
            f"model.path={retrieval_data / 'fgclip'}", "loss.regional=false", "loss.hard_negatives=false",
            "model.reranker={text_kind: short, negatives: 2, hidden_size: 16, num_hidden_layers: 1, "
            "num_attention_heads: 2, intermediate_size: 32, dropout: 0.0}",
            f"data.train={shapes / 'train.jsonl'}", f"data.image_root={shapes}", f"training.output_dir={out}",
            "training.per_device_train_batch_size=4", "training.num_train_epochs=2", "training.save_steps=3",
            "training.save_total_limit=null", "training.logging_steps=1", "training.warmup_steps=0",
            "training.learning_rate=1e-3", "training.dataloader_num_workers=0", "training.seed=5",
            "training.use_cpu=true", "training.bf16=false"])

    full = train(config(tmp_path / "full"))
    assert [entry["step"] for entry in full.log_history if "loss" in entry] == list(range(1, 7))
    shutil.copytree(Path(full.output_dir) / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = train(config(tmp_path / "resumed"), resume=True)
    reference, weights = (load_file(Path(run.final_model_dir) / "model.safetensors") for run in (full, resumed))
    assert set(reference) == set(weights) and not any(key.startswith("dual_encoder") for key in reference)
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=0, atol=1e-6, msg=name)

    output = tmp_path / "eval"
    (retrieval_data / "layout" / "tsv").mkdir(parents=True, exist_ok=True)
    for item in retrieval_data.iterdir():
        if item.suffix in (".png", ".tsv"):
            shutil.copy(item, retrieval_data / "layout" / "tsv" / item.name)
    assert eval_main(["--model", str(retrieval_data / "fgclip"), "--reranker", full.final_model_dir, "--tasks",
                      "retrieval", "--data-root", str(retrieval_data / "layout"), "--output-dir", str(output),
                      "--device", "cpu", "--workers", "0", "--no-progress", "--rerank-top-k", "4"]) == 0
    metrics = json.loads((output / "results.json").read_text())["results"]["fgclip"]["retrieval/tsv/set"]
    assert {"i2t_r1", "rerank_i2t_r1", "rerank_t2i_r10"} <= set(metrics)
