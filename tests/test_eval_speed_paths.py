"""The evaluation's per-device batching: on the CPU at most a few images and about a thousand text
tokens per tower call, the batch sizes as given elsewhere; the features equal those of one image /
one text per call (within the rounding of a different batch), and a bfloat16 pass under one
autocast region gives the features of one region per batch bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.encoders import Encoder, prepare_images
from fgclip.eval.common import ImageRequest
from fgclip.eval.features import FeatureExtractor
from fgclip.image_io import load_image
from fgclip.testing import tiny_config
from numerics import assert_close_to_reference, tower_terms

pytestmark = pytest.mark.numerics


class CountingEncoder(Encoder):
    """Records the images per image-tower call and the texts per text-tower call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_calls, self.text_calls = [], []

    def encode_regions(self, batch):
        self.image_calls.append(batch["pixel_values"].shape[0])
        return super().encode_regions(batch)

    def encode_images(self, batch):
        self.image_calls.append(batch["pixel_values"].shape[0])
        return super().encode_images(batch)

    def encode_texts(self, texts, kind="short"):
        self.text_calls.append(list(texts))
        return super().encode_texts(texts, kind)


class OnDevice(Encoder):
    """An encoder that reports another device type (only the batching choices are asked)."""

    def __init__(self, model, processor, device_type: str):
        super().__init__(model, processor)
        self.device_type = device_type

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_type)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config()).eval()
    return CountingEncoder(model, FGCLIPProcessor.for_config(model.config))


@pytest.fixture(scope="module")
def requests(tmp_path_factory) -> list[ImageRequest]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for index in range(11):
        width, height = 40 + 4 * index, 36 + 2 * (index % 4)
        path = root / f"{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        boxes = np.array([[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, width, height], [5.0, 3.0, 9.0 + index, 33.0]])
        out.append(ImageRequest(str(path), boxes[: 1 + index % 3], source=str(path)))
    return out


def one_image_per_call(encoder: Encoder, request: ImageRequest, regions: bool) -> torch.Tensor:
    image = load_image(request.path)
    batch = prepare_images(encoder.processor, [image], [torch.as_tensor(request.boxes).float()] if regions else None)
    with torch.inference_mode():
        features = encoder.model.get_region_features(**batch) if regions else encoder.model.get_image_features(**batch)
    return F.normalize(features.float(), dim=-1)


def test_the_cpu_takes_at_most_eight_images_and_a_thousand_text_tokens_per_call(encoder):
    extractor = FeatureExtractor(encoder, batch_size=64, text_batch_size=256, num_workers=0, progress=False)
    assert extractor.images_per_call() == 8
    assert extractor.texts_per_call(16) == 64 and extractor.texts_per_call(248) == 4
    assert extractor.texts_per_call(2000) == 1  # a text longer than the budget goes alone
    small = FeatureExtractor(encoder, batch_size=3, text_batch_size=5, num_workers=0, progress=False)
    assert small.images_per_call() == 3 and small.texts_per_call(16) == 5


@pytest.mark.parametrize("device_type", ["cuda", "mps"])
def test_other_devices_take_the_batch_sizes_as_given(encoder, device_type):
    extractor = FeatureExtractor(OnDevice(encoder.model, encoder.processor, device_type), batch_size=64,
                                 text_batch_size=256, num_workers=0, progress=False)
    assert extractor.images_per_call() == 64
    assert extractor.texts_per_call(16) == 256 and extractor.texts_per_call(248) == 256


@pytest.mark.parametrize("regions", [True, False])
def test_cpu_image_calls_equal_one_image_per_call(encoder, requests, regions):
    extractor = FeatureExtractor(encoder, batch_size=64, num_workers=0, progress=False)
    extractor.device_images_per_call = {"cpu": 4}
    encoder.image_calls.clear()
    if regions:
        features = extractor.encode_regions(requests).features
    else:
        features = extractor.encode_images(requests)
    assert encoder.image_calls == [4, 4, 3]
    reference = torch.cat([one_image_per_call(encoder, request, regions) for request in requests])
    tokens = (32 // 8) ** 2 + 1
    assert_close_to_reference(features, reference, terms=tower_terms(encoder.model.config.vision_config, tokens))


def test_cpu_text_calls_hold_the_token_budget_and_equal_one_text_per_call(encoder):
    words = "a red wooden chair with black metal legs and a green woollen cushion on its seat".split()
    texts = [" ".join(words[: 1 + (index * 5) % len(words)]) + f" {index}" for index in range(30)]
    extractor = FeatureExtractor(encoder, text_batch_size=256, num_workers=0, progress=False)
    extractor.device_text_tokens_per_call = {"cpu": 40}
    encoder.text_calls.clear()
    features = extractor.encode_texts(texts, "region")
    processor = encoder.processor
    for call in encoder.text_calls:
        width = processor(text=call, text_kind="region", padding="longest")["input_ids"].shape[1]
        assert len(call) * width <= 40 or len(call) == 1
    assert sorted(text for call in encoder.text_calls for text in call) == sorted(texts)
    with torch.inference_mode():
        alone = torch.cat([F.normalize(encoder.model.get_text_features(**processor(text=[text], text_kind="region")),
                                       dim=-1) for text in texts])
    assert_close_to_reference(features, alone, terms=tower_terms(encoder.model.config.text_config, 77))


def test_bf16_pass_under_one_autocast_region_equals_one_region_per_batch(encoder, requests):
    extractor = FeatureExtractor(encoder, batch_size=64, num_workers=0, bf16=True, progress=False)
    extractor.device_images_per_call = {"cpu": 4}
    features = extractor.encode_regions(requests).features
    texts = [f"a photo of object number {index}" + " big" * (index % 4) for index in range(9)]
    text_features = extractor.encode_texts(texts, "short")
    reference = []
    with torch.inference_mode():
        for start in range(0, len(requests), 4):
            chunk = requests[start:start + 4]
            batch = prepare_images(encoder.processor, [load_image(r.path) for r in chunk],
                                   [torch.as_tensor(r.boxes).float() for r in chunk])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                reference.append(encoder.encode_regions(batch).float())
        ordered, batches = extractor._text_batches(sorted(set(texts)), "short")
        by_text = {}
        for start, end in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                rows = encoder.encode_texts(ordered[start:end], "short").float()
            by_text.update(zip(ordered[start:end], rows))
    assert torch.equal(features, torch.cat(reference))
    assert torch.equal(text_features, torch.stack([by_text[text] for text in texts]))


class CastRecorder(TorchDispatchMode):
    """Records the storage of every float32 tensor cast to bfloat16."""

    def __init__(self):
        super().__init__()
        self.sources = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            self.sources.append(args[0].untyped_storage().data_ptr())
        return func(*args, **kwargs)


def test_bf16_pass_casts_each_weight_once(encoder, requests):
    """The pass keeps autocast's casts (no inference mode, under which autocast caches nothing): over
    three image batches and two text batches every parameter is cast to bfloat16 at most once."""
    extractor = FeatureExtractor(encoder, batch_size=64, num_workers=0, bf16=True, progress=False)
    extractor.device_images_per_call = {"cpu": 2}
    extractor.text_batch_size = 3
    parameters = {parameter.untyped_storage().data_ptr() for parameter in encoder.model.parameters()}
    with CastRecorder() as recorder:
        extractor.encode_regions(requests[:6])
        extractor.encode_texts([f"object {index}" for index in range(6)], "short")
    weight_casts = [source for source in recorder.sources if source in parameters]
    assert weight_casts and len(weight_casts) == len(set(weight_casts))


@pytest.mark.parametrize("given, expected", [([], 0), (["--workers", "3"], 3)])
def test_eval_on_the_cpu_decodes_images_in_line_unless_told(monkeypatch, tmp_path, given, expected):
    """The CPU's towers use every core: no DataLoader workers by default there; other devices take up to 4."""
    import fgclip.eval.cli as cli
    import fgclip.eval.runner as runner
    from fgclip.cli import main
    from fgclip.errors import ConfigError

    seen = []

    def capture(entries, config):
        seen.append(config.num_workers)
        raise ConfigError("captured")

    monkeypatch.setattr(cli, "_model_entries", lambda *args: [])
    monkeypatch.setattr(runner, "run_evaluation", capture)
    assert main(["eval", "--model", f"m={tmp_path}", "--data-root", str(tmp_path), "--output-dir",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress", *given]) == 2
    assert seen == [expected]
    for cores, gpu_workers in [(range(8), 4), (range(2), 2), (range(1), 1)]:  # up to 4, at most the cores
        monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid, cores=cores: set(cores))
        assert (cli.default_workers("cuda"), cli.default_workers("cpu")) == (gpu_workers, 0)
