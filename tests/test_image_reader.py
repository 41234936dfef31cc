"""The project's one image reader (fgclip.image_io.load_image), checked by hand once, and
every part that reads images (CLI, evaluation, FineHARD files and shards, curation, LLaVA data,
MMBench) shown to give the same pixels through it."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from fgclip.errors import ImageError
from fgclip.image_io import image_size, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)
ORIENTATION = 0x0112  # EXIF tag


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.fixture
def rotated_png(tmp_path):
    """4 x 2 pixels stored, left half red, right half blue, EXIF orientation 6 (shown turned 90 degrees
    clockwise): displayed 2 x 4, red on top, blue below."""
    image = Image.new("RGB", (4, 2), RED)
    image.paste(BLUE, (2, 0, 4, 2))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    return path


def test_exif_orientation_is_applied(rotated_png):
    image = load_image(rotated_png)
    assert image.size == (2, 4) and image_size(rotated_png) == (2, 4)
    assert pixels(image)[0, 0].tolist() == list(RED) and pixels(image)[3, 1].tolist() == list(BLUE)


def test_sixteen_bit_grey_is_scaled_not_saturated(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 300]], dtype=np.uint16)  # 300 / 257 = 1.17 -> 1
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    assert pixels(load_image(path))[0].tolist() == [[0] * 3, [100] * 3, [255] * 3, [1] * 3]


def test_alpha_is_dropped_as_pil_convert_does(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (200, 100, 50, 128))
    path = tmp_path / "alpha.png"
    rgba.save(path)
    assert pixels(load_image(path))[0].tolist() == [[10, 20, 30], [200, 100, 50]]


@pytest.mark.parametrize("name, content, message", [
    ("missing.png", None, "image file not found"),
    ("empty.jpg", b"", "empty file (0 bytes), not an image"),
    ("notes.png", b"these are words, not pixels", "not an image file PIL can read"),
    ("cut.png", "truncated", "truncated or corrupt image"),
])
def test_bad_files_are_image_errors_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_decompression_bomb_is_an_image_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (30, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 pixels > 2 x 100: PIL's error threshold
    with pytest.raises(ImageError, match=rf"^{path}: .*900 pixels.*decompression-bomb guard"):
        load_image(path)


def test_every_part_reads_images_through_the_same_reader(rotated_png, tmp_path):
    """An oriented, 16-bit or transparent image gives the same pixels to each part."""
    from fgclip.data.finehard import decode_shard_sample, load_rgb
    from fgclip.eval.common import ImageRequest
    from fgclip.eval.features import _ImageDataset
    from mllm.data import open_image

    grey = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 40000], [65535, 257]], dtype=np.uint16)).save(grey)
    for path in (rotated_png, grey):
        expected = pixels(load_image(path))
        assert np.array_equal(pixels(load_rgb(path)), expected)  # FineHARD files, curation
        assert np.array_equal(pixels(open_image(path, "records.json: record 0")), expected)  # LLaVA data
        sample = {"__key__": "0", "json": json.dumps({"f_path": "x.png", "caption": "c", "short_caption": "s",
                                                      "bbox_info": []}).encode(), "png": path.read_bytes()}
        assert np.array_equal(pixels(decode_shard_sample(sample)[0]), expected)  # FineHARD shards
        image, _ = _ImageDataset([ImageRequest(str(path))], processor=None, with_boxes=False)[0]
        assert np.array_equal(pixels(image), expected)  # evaluation


def test_mmbench_build_reads_its_base64_images_through_the_reader(tmp_path):
    from mllm.eval import mmbench

    grey = io.BytesIO()
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(grey, "PNG")
    tsv = tmp_path / "mmbench.tsv"
    tsv.write_text("index\tquestion\tA\tB\tanswer\timage\n"
                   f"0\tWhich?\tleft\tright\tA\t{base64.b64encode(grey.getvalue()).decode()}\n")
    assert mmbench.main(["build", "--tsv", str(tsv), "--image-dir", str(tmp_path / "images"),
                         "--output", str(tmp_path / "questions.jsonl")]) == 0
    assert pixels(Image.open(tmp_path / "images" / "0.png"))[0].tolist() == [[0] * 3, [255] * 3]


def test_shard_with_a_truncated_image_names_the_sample(tmp_path):
    from fgclip.data.finehard import RecordError, decode_shard_sample

    sample = {"__key__": "7", "__url__": "s.tar", "json": json.dumps(
        {"f_path": "x.png", "caption": "c", "short_caption": "s", "bbox_info": []}).encode(), "png": b"\x89PNG\r\n"}
    with pytest.raises(RecordError, match=r"^s.tar sample 7: png: cannot decode image: not an image file"):
        decode_shard_sample(sample)
