"""The fgclip console script: score table and heatmap, checked against direct model calls."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.cli import main, parse_box, similarity_map
from fgclip.encoders import Encoder
from fgclip.testing import tiny_config
from numerics import assert_close_to_reference


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    config = tiny_config()
    model = FGCLIPModel(config).eval()
    model.save_pretrained(directory)
    FGCLIPProcessor.for_config(config).save_pretrained(directory)
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    image.paste((20, 20, 200), (32, 0, 64, 48))
    image.save(directory / "scene.png")
    return directory, model


def test_score_table_matches_model(saved, capsys):
    directory, model = saved
    texts = ["a red square", "a blue square"]
    main(["score", str(directory / "scene.png"), "--model", str(directory), "--device", "cpu",
          "--box", "0,0,32,48", "--box", "32,8,64,40", "--text", texts[0], "--text", texts[1]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "box" and len(lines) == 4
    printed = torch.tensor([[float(v) for v in line.split()[1:]] for line in lines[2:]])
    # Boxes mapped by hand: 64x48 image squashed to 32x32.
    boxes = torch.tensor([[0, 0, 32 / 2, 48 * 32 / 48], [32 / 2, 8 * 32 / 48, 64 / 2, 40 * 32 / 48]])
    processor = FGCLIPProcessor.from_pretrained(directory)
    with torch.no_grad():
        pixels = processor(images=str(directory / "scene.png"))["pixel_values"]
        regions = F.normalize(model.get_region_features(pixels, [boxes]), dim=-1)
        text = F.normalize(model.get_text_features(**processor(text=texts, text_kind="region")), dim=-1)
    torch.testing.assert_close(printed, regions @ text.t(), atol=1e-4, rtol=0)


def test_heatmap_png_and_values(saved, tmp_path):
    directory, model = saved
    output = tmp_path / "map.png"
    main(["heatmap", str(directory / "scene.png"), "red square", "--model", str(directory), "-o", str(output)])
    with Image.open(output) as png:
        assert png.format == "PNG" and png.width > 100
    processor = FGCLIPProcessor.from_pretrained(directory)
    small = Image.open(directory / "scene.png").resize((20, 12))
    similarity = similarity_map(Encoder(model, processor), small, "red square")
    assert similarity.shape == (12, 20)
    with torch.no_grad():
        dense = F.normalize(model.get_dense_features(**processor(images=small)), dim=-1)[0]
        query = F.normalize(model.get_text_features(**processor(text=["red square"], text_kind="short")), dim=-1)[0]
    # The 4x4 patch grid is stretched 3x vertically and 5x horizontally (odd factors), so
    # patch (1, 2) lands exactly on pixel (1 * 3 + 1, 2 * 5 + 2) = (4, 12); the same features, normalised
    # and multiplied in another order, then interpolated (4 terms): a cosine, its terms at most 1
    assert_close_to_reference(similarity[4, 12], dense[1, 2] @ query, terms=3 * query.shape[-1] + 4, scale=1.0)


def test_console_script_errors_are_readable(saved):
    directory, _ = saved
    with pytest.raises(Exception, match="x1,y1,x2,y2"):
        parse_box("1,2,3")
    result = subprocess.run([sys.executable, "-m", "fgclip.cli", "score", str(directory / "scene.png"),
                             "--model", str(directory), "--box", "0,0,100,10", "--text", "a cat"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (f"error: {directory / 'scene.png'}: --box 0,0,100,10: expected 0 <= x1 < x2 <= 64 and "
                             "0 <= y1 < y2 <= 48 (pixels of this 64x48 image)")


def test_a_box_with_negative_coordinates_reaches_the_range_check(saved, capsys):
    """``--box -5,-5,10,10`` is a box, not an unknown option: its error is the range check's."""
    directory, _ = saved
    assert main(["score", str(directory / "scene.png"), "--model", str(directory), "--box", "-5,-5,10,10",
                 "--text", "a cat"]) == 2
    assert capsys.readouterr().err == (f"error: {directory / 'scene.png'}: --box -5,-5,10,10: expected 0 <= x1 < x2 "
                                       "<= 64 and 0 <= y1 < y2 <= 48 (pixels of this 64x48 image)\n")


def test_fgclip2_checkpoint_scores_and_heatmap(tmp_path, capsys):
    from fgclip import FGCLIP2Model, FGCLIP2Processor
    from fgclip.testing import tiny_fgclip2_config, tiny_word_tokenizer

    torch.manual_seed(0)
    model = FGCLIP2Model(tiny_fgclip2_config()).eval()
    model.save_pretrained(tmp_path)
    FGCLIP2Processor.for_config(model.config, tiny_word_tokenizer("a red blue square".split())).save_pretrained(tmp_path)
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    image.paste((20, 20, 200), (20, 0, 40, 24))
    image.save(tmp_path / "scene.png")
    texts = ["a red square", "a blue square"]
    main(["score", str(tmp_path / "scene.png"), "--model", str(tmp_path), "--device", "cpu",
          "--box", "0,0,20,24", "--box", "20,4,40,20", "--text", texts[0], "--text", texts[1]])
    printed = torch.tensor([[float(v) for v in line.split()[1:]] for line in capsys.readouterr().out.splitlines()[2:]])
    processor = FGCLIP2Processor.from_pretrained(tmp_path)
    batch = processor(images=str(tmp_path / "scene.png"), boxes=[torch.tensor([[0, 0, 20, 24], [20, 4, 40, 20.]])])
    with torch.no_grad():
        regions = model.get_region_features(**batch, normalize=True)
        text = model.get_text_features(**processor(text=texts, text_kind="region"), normalize=True)
    torch.testing.assert_close(printed, regions @ text.T, atol=1e-4, rtol=0)
    main(["heatmap", str(tmp_path / "scene.png"), "red square", "--model", str(tmp_path), "-o", str(tmp_path / "m.png")])
    with Image.open(tmp_path / "m.png") as png:
        assert png.format == "PNG"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "gpu0"])
def test_a_device_the_machine_lacks_is_one_error_line(device, saved, capsys):
    directory, _ = saved
    assert main(["score", str(directory / "scene.png"), "--model", str(directory), "--box", "0,0,10,10",
                 "--text", "a cat", "--device", device]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --device {device}: ") and error.count("\n") == 1
    assert ("no CUDA GPU (use --device cpu, or auto)" in error) is device.startswith("cuda")


HEATMAP_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from fgclip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_heatmap_write_leaves_no_partial_png(saved, tmp_path):
    """A write that fails part-way (here a 4 KiB file-size limit) names the output and leaves nothing there."""
    directory, _ = saved
    output = tmp_path / "map.png"
    result = subprocess.run([sys.executable, "-c", HEATMAP_UNDER_A_SIZE_LIMIT, "heatmap", str(directory / "scene.png"),
                             "red square", "--model", str(directory), "-o", str(output)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {output}: File too large"
    assert list(tmp_path.iterdir()) == []


class RunsCode:
    """A pickled object whose unpickling runs code: it creates the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_pickled_weights_are_refused_with_our_wording_then_converted_on_trust(saved, tmp_path, capsys):
    directory, model = saved
    checkpoint = tmp_path / "pickled"
    checkpoint.mkdir()
    for name in ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).write_bytes((directory / name).read_bytes())
    marker = tmp_path / "code-ran"
    torch.save({**model.state_dict(), "extra": RunsCode(marker)}, checkpoint / "pytorch_model.bin")
    score = ["score", str(directory / "scene.png"), "--box", "0,0,32,48", "--text", "a red square", "--device", "cpu"]

    assert main([*score, "--model", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"error: {checkpoint}/pytorch_model.bin: not a safe checkpoint: it pickles a Python object "
                     "(os.makedirs) besides tensors and plain values, which only code could rebuild (if you trust "
                     f"its source, convert it with `fgclip to-safetensors {checkpoint}/pytorch_model.bin "
                     "--trust-source`)")
    assert not marker.exists()

    with pytest.raises(SystemExit):  # the conversion unpickles: it has to be asked for with --trust-source
        main(["to-safetensors", str(checkpoint / "pytorch_model.bin")])
    assert not marker.exists()
    assert main(["to-safetensors", str(checkpoint / "pytorch_model.bin"), "--trust-source"]) == 0
    assert marker.exists() and (checkpoint / "model.safetensors").is_file()
    capsys.readouterr()
    main([*score, "--model", str(checkpoint)])
    converted = capsys.readouterr().out
    main([*score, "--model", str(directory)])
    assert converted == capsys.readouterr().out
