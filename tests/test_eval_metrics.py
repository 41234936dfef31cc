"""Evaluation metrics against brute-force loops written from their definitions, plus the
template / class-name data against open_clip's copy of the same facts."""
import random

import pytest
import torch

from fgclip.eval.metrics import (
    classification_ranks,
    multiple_choice_accuracy,
    retrieval_recall,
    target_ranks,
    topk_accuracy,
)
from fgclip.eval.templates import IMAGENET_CLASSNAMES, IMAGENET_TEMPLATES


def brute_topk(scores: list[list[float]], targets: list[int], k: int) -> float:
    """Sort each row's classes best first; the target is found when it sits in the first k."""
    hits = 0
    for row, target in zip(scores, targets):
        order = sorted(range(len(row)), key=lambda c: -row[c])
        hits += target in order[:k]
    return hits / len(targets)


def test_topk_accuracy_matches_sorting():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 12, generator=generator)
    targets = torch.randint(0, 12, (50,), generator=generator)
    result = topk_accuracy(scores, targets, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert result[f"top{k}"] == pytest.approx(brute_topk(scores.tolist(), targets.tolist(), k))


def test_ranks_hand_computed_with_ties():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2], [0.3, 0.2, 0.1]])
    targets = torch.tensor([2, 1, 2])
    # row 0: only 0.9 beats 0.5 -> rank 1; row 1: tie with 0.7 counts for the target -> 0; row 2: 2 above.
    assert target_ranks(scores, targets).tolist() == [1, 0, 2]
    assert topk_accuracy(scores, targets, ks=(1, 2)) == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3)}


def test_classification_ranks_chunked_equals_full_matrix():
    generator = torch.Generator().manual_seed(1)
    features, classifier = torch.randn(37, 8, generator=generator), torch.randn(9, 8, generator=generator)
    labels = torch.randint(0, 9, (37,), generator=generator)
    full = target_ranks(features @ classifier.t(), labels)
    assert torch.equal(classification_ranks(features, classifier, labels, chunk=5), full)


def test_multiple_choice_accuracy_variable_negatives():
    rng = random.Random(0)
    positives, negatives = [], []
    for _ in range(40):
        positives.append(rng.uniform(-1, 1))
        negatives.append([rng.uniform(-1, 1) for _ in range(rng.randint(1, 10))])
    positives[0], negatives[0] = 0.5, [0.5, 0.1]  # a tie counts as correct (upstream FG-OVD)
    expected = sum(p >= max(n) for p, n in zip(positives, negatives)) / len(positives)
    width = max(map(len, negatives))
    padded = torch.full((40, width), 99.0)  # padding that would beat every positive if not masked
    valid = torch.zeros(40, width, dtype=torch.bool)
    for row, values in enumerate(negatives):
        padded[row, : len(values)] = torch.tensor(values)
        valid[row, : len(values)] = True
    result = multiple_choice_accuracy(torch.tensor(positives), padded, valid)
    assert result == pytest.approx(expected)


def brute_recall(similarity: list[list[float]], text_to_image: list[int], k: int) -> tuple[float, float]:
    num_images, num_texts = len(similarity), len(text_to_image)
    image_hits = 0
    for image in range(num_images):
        order = sorted(range(num_texts), key=lambda t: -similarity[image][t])
        image_hits += any(text_to_image[t] == image for t in order[:k])
    text_hits = 0
    for text in range(num_texts):
        order = sorted(range(num_images), key=lambda i: -similarity[i][text])
        text_hits += text_to_image[text] in order[:k]
    return image_hits / num_images, text_hits / num_texts


@pytest.mark.parametrize("chunk", [3, 256])
def test_retrieval_recall_several_captions_per_image(chunk):
    generator = torch.Generator().manual_seed(2)
    rng = random.Random(2)
    text_to_image = [image for image in range(23) for _ in range(rng.randint(1, 5))]
    rng.shuffle(text_to_image)
    images = torch.randn(23, 6, generator=generator)
    texts = torch.randn(len(text_to_image), 6, generator=generator)
    result = retrieval_recall(images, texts, torch.tensor(text_to_image), ks=(1, 5, 10), chunk=chunk)
    similarity = (images @ texts.t()).tolist()
    for k in (1, 5, 10):
        i2t, t2i = brute_recall(similarity, text_to_image, k)
        assert result[f"i2t_r{k}"] == pytest.approx(i2t)
        assert result[f"t2i_r{k}"] == pytest.approx(t2i)


def test_retrieval_recall_needs_a_caption_for_every_image():
    with pytest.raises(ValueError, match="every image needs at least one text"):
        retrieval_recall(torch.randn(3, 4), torch.randn(2, 4), torch.tensor([0, 0]))


def test_templates_and_classnames_match_open_clip():
    zero_shot = pytest.importorskip("open_clip.zero_shot_metadata")
    assert len(IMAGENET_TEMPLATES) == 80 and len(IMAGENET_CLASSNAMES) == 1000
    assert all(template.count("{}") == 1 for template in IMAGENET_TEMPLATES)
    assert list(IMAGENET_TEMPLATES) == [make("{}") for make in zero_shot.OPENAI_IMAGENET_TEMPLATES]
    assert list(IMAGENET_CLASSNAMES) == list(zero_shot.IMAGENET_CLASSNAMES)
