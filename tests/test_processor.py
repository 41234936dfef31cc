"""FGCLIPProcessor: tokenisation against open_clip's independent CLIP tokenizer, image and box mapping."""
import warnings

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from fgclip import FGCLIPProcessor
from fgclip.errors import ImageError
from numerics import assert_close_to_reference

pytestmark = pytest.mark.numerics

TEXTS = [
    "a photo of a cat",
    "A Black plastic telephone with red buttons, and a dark-grey bezel!",
    "two  dogs\tplaying in the snow's edge (left) 3 times",
]


@pytest.fixture(scope="module")
def processor():
    return FGCLIPProcessor(image_size=32)


def test_tokens_match_open_clip(processor):
    reference = SimpleTokenizer()(TEXTS, context_length=77)
    ids = processor(text=TEXTS, text_kind="short")["input_ids"]
    assert ids.shape == (3, 77)
    for row, ref in zip(ids, reference):
        length = int((ref != 0).sum())
        assert row[:length].tolist() == ref[:length].tolist()
        assert (row[length:] == 49407).all()  # pad = eos


def test_long_texts_pad_to_248_and_truncation_is_counted(processor):
    long_text = " ".join(["red"] * 300)
    assert processor(text=["a dog"], text_kind="long")["input_ids"].shape == (1, 248)
    with pytest.warns(UserWarning, match="1 of 2 long texts exceed 248 tokens"):
        ids = processor(text=[long_text, "a dog"], text_kind="long")["input_ids"]
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    with pytest.warns(UserWarning, match="2 of 2 region texts exceed 77"):
        processor(text=[long_text, long_text], text_kind="region")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text=TEXTS, text_kind="short")


def test_images_are_squashed_with_clip_normalisation(processor):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255
    pixels = processor(images=Image.fromarray(array))["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    # white and black pixels away from the edge; the rescale by 1/255, the mean and the std round
    assert_close_to_reference(pixels[0, :, 16, 2], (1 - mean) / std, terms=4)
    assert_close_to_reference(pixels[0, :, 16, 29], (0 - mean) / std, terms=4)


def test_grayscale_and_rgba_images_are_converted(processor):
    gray = Image.fromarray(np.full((10, 10), 128, dtype=np.uint8), mode="L")
    rgba = Image.fromarray(np.full((10, 10, 4), 128, dtype=np.uint8), mode="RGBA")
    pixels = processor(images=[gray, rgba])["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(pixels[0], pixels[1])


def test_box_mapping_squash_and_pad():
    image = Image.new("RGB", (200, 100))
    boxes = [torch.tensor([[20.0, 10.0, 120.0, 90.0]])]
    squashed = FGCLIPProcessor(image_size=32)(images=image, boxes=boxes)["boxes"]
    expected = torch.tensor([[20 * 32 / 200, 10 * 32 / 100, 120 * 32 / 200, 90 * 32 / 100]])
    assert_close_to_reference(squashed[0], expected, terms=2)
    padded = FGCLIPProcessor(image_size=32, resize_mode="pad")(images=image, boxes=boxes)["boxes"]
    scale = 32 / 200  # padded to 200x200, image pasted 50 px down
    assert_close_to_reference(padded[0], torch.tensor([[20 * scale, 60 * scale, 120 * scale, 140 * scale]]), terms=2)


@pytest.mark.parametrize("mode", ["squash", "pad"])
def test_a_box_on_the_image_edge_maps_onto_the_input_edge(mode):
    """Whole-image boxes of 640 x h images, h = 100..399: their far edges map to exactly 224 (in float32
    arithmetic, h * (224 / h) exceeds 224 for 37 of these heights, e.g. 102, 104 and 105, and the model
    then refuses the box as outside its input; FG-OVD's released hard file has such images)."""
    processor = FGCLIPProcessor(image_size=224, resize_mode=mode)
    images = [Image.new("RGB", (640, height)) for height in range(100, 400)]
    boxes = [torch.tensor([[0.0, 0.0, 640.0, float(height)]]) for height in range(100, 400)]
    mapped = torch.cat(processor(images=images, boxes=boxes)["boxes"])
    assert float(mapped[:, 2:].max()) == 224.0 and float(mapped.min()) >= 0.0


def test_pad_mode_fills_with_mean_colour():
    white = Image.new("RGB", (64, 16), (255, 255, 255))
    pixels = FGCLIPProcessor(image_size=32, resize_mode="pad")(images=white)["pixel_values"]
    assert pixels[0, :, 1, 16].abs().max() < 0.02  # the mean colour normalises to ~0
    assert pixels[0, 0, 16, 16] > 1.5  # white


def test_bad_images(processor, tmp_path):
    with pytest.raises(ImageError, match="missing.png: image file not found"):
        processor(images=str(tmp_path / "missing.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="broken.png: not an image file"):
        processor(images=str(tmp_path / "broken.png"))
    with pytest.raises(ValueError, match="resize_mode"):
        FGCLIPProcessor(resize_mode="crop")
