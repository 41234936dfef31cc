"""FG-CLIP 2 through the evaluation suite: auto-detected checkpoints, NaFlex batches of images of
different sizes giving the features of one-image passes, and Chinese TSV retrieval against a
brute-force ranking of directly computed features."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fgclip import FGCLIP2Model, FGCLIP2Processor
from fgclip import FGCLIP2Model
from fgclip.encoders import detect_model_type, load_encoder
from fgclip.eval import FeatureExtractor
from fgclip.eval.common import ImageRequest
from fgclip.eval.retrieval import evaluate_retrieval, load_tsv
from fgclip.testing import tiny_fgclip2_config, tiny_word_tokenizer
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics

CAPTIONS = {  # image file: (size, Chinese captions, space-separated for the word-level test tokenizer)
    "a.png": ((40, 24), ["一只 红色 的 汽车", "红色 汽车 在 路上"]),
    "b.png": ((16, 16), ["一只 蓝色 的 鸟"]),
    "c.png": ((12, 28), ["绿色 的 草地", "草地 上 的 椅子"]),
    "d.png": ((30, 30), ["一把 木头 椅子"]),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("fgclip2")
    words = sorted({word for _, captions in CAPTIONS.values() for caption in captions for word in caption.split()})
    model = FGCLIP2Model(tiny_fgclip2_config())
    model.save_pretrained(directory)
    FGCLIP2Processor.for_config(model.config, tiny_word_tokenizer(words)).save_pretrained(directory)
    generator = torch.Generator().manual_seed(1)
    for name, ((width, height), _) in CAPTIONS.items():
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(directory / name)
    lines = [f"{name}\t{caption}" for name, (_, captions) in CAPTIONS.items() for caption in captions]
    (directory / "cn.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def test_checkpoint_is_detected_and_loaded_as_fgclip2(checkpoint):
    assert detect_model_type(checkpoint) == "fgclip2"
    assert isinstance(load_encoder(checkpoint).model, FGCLIP2Model)


@pytest.mark.parametrize("batch_size, workers", [(3, 0), (2, 1)])
def test_batched_region_features_equal_one_image_passes(checkpoint, batch_size, workers):
    evaluated = load_encoder(checkpoint)
    boxes = {"a.png": [[0, 0, 40, 24], [5, 3, 20, 20]], "b.png": [[2, 2, 9, 14]], "c.png": [[0, 10, 12, 28]],
             "d.png": [[1, 1, 29, 15], [10, 10, 30, 30]]}
    requests = [ImageRequest(str(checkpoint / name), torch.tensor(b, dtype=torch.float32).numpy(), source=name)
                for name, b in boxes.items()]
    extractor = FeatureExtractor(evaluated, batch_size=batch_size, num_workers=workers, progress=False)
    features = extractor.encode_regions(requests).features
    model, processor = evaluated.model, evaluated.processor
    expected, patches = [], 0
    with torch.no_grad():
        for name, image_boxes in boxes.items():
            batch = processor(images=str(checkpoint / name), boxes=[torch.tensor(image_boxes).float()])
            expected.append(model.get_region_features(**batch, normalize=True))
            patches = max(patches, batch["pixel_values"].shape[1])
    # the image tower over the padded batch or one image, then bilinear interpolation (4 terms) at up to
    # one sample per patch, and their mean
    terms = tower_terms(model.config.vision_config, patches) + 5 * patches
    assert_close_to_reference(features, torch.cat(expected), terms=terms)


def test_chinese_tsv_retrieval_matches_brute_force(checkpoint):
    evaluated = load_encoder(checkpoint)
    dataset = load_tsv(checkpoint / "cn.tsv", text_kind="long")
    result = evaluate_retrieval(FeatureExtractor(evaluated, batch_size=3, num_workers=0, progress=False), dataset)
    model, processor = evaluated.model, evaluated.processor
    with torch.no_grad():
        images = torch.cat([F.normalize(model.get_image_features(**processor(images=path)), dim=-1)
                            for path in dataset.images])
        texts = torch.cat([F.normalize(model.get_text_features(**processor(text=[t], text_kind="long")), dim=-1)
                           for t in dataset.texts])
    scores = images @ texts.T
    owners = dataset.text_to_image
    for k in (1, 5, 10):
        i2t = sum(any(owners[t] == i for t in scores[i].argsort(descending=True)[:k].tolist())
                  for i in range(len(images))) / len(images)
        t2i = sum(owners[t] in scores[:, t].argsort(descending=True)[:k].tolist()
                  for t in range(len(texts))) / len(texts)
        assert result[f"i2t_r{k}"] == pytest.approx(i2t) and result[f"t2i_r{k}"] == pytest.approx(t2i)
    assert (result["num_images"], result["num_texts"]) == (4, 6)
