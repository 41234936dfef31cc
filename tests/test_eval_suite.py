"""The evaluation suite end to end: the model interface, known-answer fixtures, the shared
FG-OVD excerpt against the upstream one-box-per-forward computation, and invariance of the
results to batch size (1 vs 7) and world size (1 vs 2 processes under torchrun, gloo)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.ops import roi_align
from transformers import CLIPConfig, CLIPModel

import fgclip.modeling_fgclip as fgclip_modeling
from fgclip import FGCLIPModel, FGCLIPProcessor
from fgclip.cli import main
from fgclip.eval.boxcls import evaluate_boxcls, load_coco_boxes
from fgclip.eval.common import DataError, ImageRequest
from fgclip.eval.features import FeatureExtractor
from fgclip.eval.fgovd import evaluate_fgovd, load_fgovd
from fgclip.encoders import Encoder, detect_model_type, load_encoder
from fgclip.eval.runner import EvalOptions, RunConfig, run_evaluation
from fgclip.eval.zeroshot import evaluate_zeroshot, load_image_folder
from fgclip.processing_fgclip import CLIP_MEAN, CLIP_STD
from fgclip.testing import tiny_config
from numerics import assert_close_to_reference, tower_terms

REPO = Path(__file__).resolve().parents[1]
# 200 records of FG-CLIP's FG-OVD easy-subset JSONL (3_attributes), as published.
SHARED_FGOVD = Path(__file__).resolve().parent / "data" / "fgovd_easy_sample.jsonl"


def noise_image(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def stand_in_image(path: Path, width: int, height: int, seed: int) -> None:
    """A cheap image of the given size: a random background colour with a few random rectangles."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        box = [x, y, int(rng.integers(x + 1, width + 1)), int(rng.integers(y + 1, height + 1))]
        draw.rectangle(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image.save(path, quality=90)


def tiny_clip(config) -> CLIPModel:
    torch.manual_seed(1)
    clip_config = CLIPConfig(text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
                             projection_dim=config.projection_dim)
    return CLIPModel(clip_config).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny FG-CLIP and a tiny plain CLIP saved as checkpoint directories."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = FGCLIPModel(tiny_config()).eval()
    model.save_pretrained(root / "fgclip")
    FGCLIPProcessor.for_config(model.config).save_pretrained(root / "fgclip")
    tiny_clip(model.config).save_pretrained(root / "clip")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Every format of the layout, small: FG-OVD JSONL + original JSON, COCO boxes and captions,
    an image-folder classification set with its own class names, and a TSV retrieval file."""
    root = tmp_path_factory.mktemp("data")
    sizes = {i: (48 + 8 * i, 40 + 6 * (i % 3)) for i in range(9)}
    for i, (w, h) in sizes.items():
        noise_image(root / f"coco/val2017/{i:012d}.jpg", w, h, seed=i)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h,
               "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg"} for i, (w, h) in sizes.items()]
    (root / "fgovd").mkdir()
    with open(root / "fgovd/1_attributes.jsonl", "w") as handle:
        for i, (w, h) in sizes.items():
            for k in range(1 + i % 3):
                handle.write(json.dumps({
                    "img_path": f"val2017/{i:012d}.jpg", "bbox": [2.0 * k, 1.0 + k, w / 2, h / 3],
                    "pos_expression": [f"a striped object {i} {k}"],
                    "neg_expression": [f"a dotted object {(i + n) % 5} {k}" for n in range(2 + (i + k) % 9)],
                    "width": w, "height": h}) + "\n")
    categories = [{"id": c, "name": f"a {color} {thing}"} for c, (color, thing) in enumerate(
        [(color, thing) for color in ("red", "green", "blue") for thing in ("cup", "hat", "car")])]
    annotations = [{"id": 100 + i, "image_id": i, "bbox": [1.0, 1.0, sizes[i][0] - 3.0, sizes[i][1] / 2],
                    "category_id": i % 9, "neg_category_ids": [(i + j) % 9 for j in range(1, 1 + i % 4 + 1)]}
                   for i in sizes]
    (root / "fgovd/2_attributes.json").write_text(
        json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    (root / "coco/annotations").mkdir(parents=True)
    names = ["person", "bicycle", "car", "dog", "cat", "umbrella", "boat"]
    detections = [{"id": 1000 + n, "image_id": i, "category_id": 10 + (i * 3 + k) % 7, "iscrowd": 0,
                   "bbox": [3.0 * k, 2.0 * k, sizes[i][0] / 2, sizes[i][1] / 2]}
                  for n, (i, k) in enumerate((i, k) for i in sizes for k in range(1 + i % 4))]
    (root / "coco/annotations/instances_val2017.json").write_text(json.dumps({
        "images": images, "annotations": detections,
        "categories": [{"id": 10 + c, "name": name} for c, name in enumerate(names)]}))
    captions = [{"id": n, "image_id": i, "caption": f"{names[(i + j) % 7]} number {j} in picture {i}"}
                for n, (i, j) in enumerate((i, j) for i in sizes for j in range(4 + i % 3))]
    (root / "coco/annotations/captions_val2017.json").write_text(json.dumps({"images": images, "annotations": captions}))
    for c in range(4):
        for j in range(3):
            noise_image(root / f"imagenet/val/n0000{c}/{j}.jpg", 36, 36, seed=100 + 3 * c + j)
    (root / "classes.txt").write_text("goldfish\ntabby cat\nfire truck\nespresso\n")
    noise_image(root / "tsv/a.jpg", 40, 40, seed=200)
    noise_image(root / "tsv/b.jpg", 44, 30, seed=201)
    (root / "tsv/cn.tsv").write_text("a.jpg\t一只猫在沙发上\nb.jpg\t一条狗在草地上\na.jpg\t猫在睡觉\n", encoding="utf-8")
    return root


def run_config(data_root: Path, output: Path, batch_size: int, **kwargs) -> RunConfig:
    return RunConfig(
        data_root=str(data_root), output_dir=str(output), tasks=["fgovd", "boxcls", "retrieval", "zeroshot"],
        overrides={"imagenet.classnames": str(data_root / "classes.txt")}, options=EvalOptions(),
        batch_size=batch_size, text_batch_size=batch_size, num_workers=0, progress=False, **kwargs,
    )


def loaded_models(checkpoints: Path):
    return [("fgclip", load_encoder(checkpoints / "fgclip"), {}), ("clip", load_encoder(checkpoints / "clip"), {})]


@pytest.fixture(scope="module")
def reference_report(checkpoints, data_root, tmp_path_factory):
    return run_evaluation(loaded_models(checkpoints), run_config(data_root, tmp_path_factory.mktemp("out7"), 7))


def metric_values(report: dict) -> dict:
    return {(model, label, key): value for model, results in report["results"].items()
            for label, metrics in results.items() for key, value in metrics.items() if key != "seconds"}


# ---------------------------------------------------------------------------------- interface
def test_load_eval_model_detects_checkpoint_type(checkpoints, tmp_path):
    assert isinstance(load_encoder(checkpoints / "fgclip").model, FGCLIPModel)
    assert load_encoder(checkpoints / "clip").long_text_kind == "short"
    upstream = tmp_path / "upstream"  # FG-CLIP weights behind a plain CLIP config.json, as on the hub
    FGCLIPModel.from_pretrained(checkpoints / "fgclip").save_pretrained(upstream)
    config = json.loads((upstream / "config.json").read_text())
    (upstream / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    assert detect_model_type(upstream) == "fgclip" and detect_model_type(checkpoints / "clip") == "clip"
    assert load_encoder(upstream).long_text_kind == "long"


def test_clip_baseline_regions_use_the_fgclip_recipe(checkpoints):
    """Plain CLIP's region features equal those of the same weights converted to FG-CLIP."""
    clip = CLIPModel.from_pretrained(checkpoints / "clip").eval()
    processor = FGCLIPProcessor(image_size=clip.config.vision_config.image_size)
    baseline = load_encoder(checkpoints / "clip", "clip")
    converted = Encoder(FGCLIPModel.from_clip(clip).eval(), processor)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [3.5, 7.0, 20.0, 15.0]]), torch.tensor([[10.0, 2.0, 31.0, 30.0]])]
    batch = {"pixel_values": pixel_values, "boxes": boxes}
    with torch.no_grad():
        images, regions = baseline.encode_images(batch), baseline.encode_regions(batch)
        images_ref = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        regions_ref = converted.encode_regions(batch)
        texts = ["a photo of a dog", "two red cups on a table"]
        torch.testing.assert_close(baseline.encode_texts(texts, "short"), converted.encode_texts(texts, "short"))
        long_text = ["word " * 150]  # beyond 77 tokens: CLIP has no long path and cuts it
        with pytest.warns(UserWarning, match="truncated"):
            torch.testing.assert_close(baseline.encode_texts(long_text, "long"), baseline.encode_texts(long_text, "short"))
    torch.testing.assert_close(images, images_ref)
    torch.testing.assert_close(regions, regions_ref)
    assert regions.shape == (3, clip.config.projection_dim)
    assert baseline.text_kind("long") == "short" and converted.text_kind("long") == "long"


# ---------------------------------------------------------------------------------- known answers
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
          "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255)}


def normalised_color(rgb) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)


class ColorModel(Encoder):
    """A model whose answer is known: a region's feature is its mean (normalised) pixel colour,
    an image's is its mean colour, and a text's is the normalised colour it names."""

    device = torch.device("cpu")

    def __init__(self):
        self.processor = FGCLIPProcessor(image_size=64)
        self.long_text_kind = "long"

    def encode_images(self, batch):
        return F.normalize(batch["pixel_values"].mean(dim=(2, 3)), dim=-1)

    def encode_regions(self, batch):
        regions = roi_align(batch["pixel_values"], list(batch["boxes"]), output_size=1, spatial_scale=1.0,
                            sampling_ratio=-1, aligned=True)
        return F.normalize(regions[:, :, 0, 0], dim=-1)

    def encode_texts(self, texts, kind="short"):
        rows = []
        for text in texts:
            named = [c for c in COLORS if re.search(rf"\b{c}\b", text)]
            assert len(named) == 1, text
            rows.append(normalised_color(COLORS[named[0]]))
        return F.normalize(torch.stack(rows), dim=-1)


def test_coco_box_classification_known_answer(tmp_path):
    """Coloured rectangles on grey images; every box is labelled with its colour except a red box
    labelled cyan (red's least similar colour: outside the top 5 of 6) and a red box labelled
    green (4th most similar to red: inside the top 5). 10 boxes -> top-1 8/10, top-5 9/10."""
    layout = {  # image: (size, [(colour, xywh box, label)])
        1: ((120, 90), [("red", (5, 5, 40, 30), "red"), ("blue", (60, 40, 50, 40), "blue"),
                        ("green", (5, 50, 30, 35), "green")]),
        2: ((100, 100), [("yellow", (0, 0, 50, 50), "yellow"), ("cyan", (50, 50, 50, 50), "cyan"),
                         ("red", (55, 0, 40, 45), "cyan")]),
        3: ((90, 140), [("magenta", (10, 10, 70, 40), "magenta"), ("red", (10, 60, 35, 35), "green"),
                        ("blue", (50, 60, 35, 70), "blue"), ("cyan", (5, 100, 40, 35), "cyan")]),
    }
    category_ids = {"cyan": 7, "red": 3, "yellow": 11, "green": 1, "magenta": 9, "blue": 5}
    images, annotations = [], []
    for image_id, ((width, height), boxes) in layout.items():
        canvas = Image.new("RGB", (width, height), (128, 128, 128))
        draw = ImageDraw.Draw(canvas)
        for color, (x, y, w, h), label in boxes:
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLORS[color])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "category_id": category_ids[label], "iscrowd": 0})
        (tmp_path / "val2017").mkdir(exist_ok=True)
        canvas.save(tmp_path / f"val2017/{image_id}.png")
        images.append({"id": image_id, "file_name": f"val2017/{image_id}.png", "width": width, "height": height})
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    dataset = load_coco_boxes(path, tmp_path)
    for batch_size in (1, 2):
        extractor = FeatureExtractor(ColorModel(), batch_size=batch_size, num_workers=0, progress=False)
        result = evaluate_boxcls(extractor, dataset)
        assert result == {"top1": pytest.approx(0.8), "top5": pytest.approx(0.9), "num_boxes": 10}


def test_zeroshot_known_answer(tmp_path):
    """Solid-colour images in colour-named class folders; one blue image filed under 'red'."""
    for folder, colors in {"a_red": ["red", "red", "blue"], "b_green": ["green"], "c_blue": ["blue", "blue"]}.items():
        for index, color in enumerate(colors):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.new("RGB", (30 + index, 20), COLORS[color]).save(tmp_path / folder / f"{index}.png")
    dataset = load_image_folder(tmp_path, ["red", "green", "blue"])
    extractor = FeatureExtractor(ColorModel(), batch_size=4, num_workers=0, progress=False)
    result = evaluate_zeroshot(extractor, dataset)
    assert result == {"top1": pytest.approx(5 / 6), "top5": pytest.approx(1.0), "num_images": 6}


def test_image_size_must_match_the_annotation(tmp_path):
    Image.new("RGB", (50, 50)).save(tmp_path / "x.png")
    request = ImageRequest(str(tmp_path / "x.png"), np.array([[0.0, 0.0, 10.0, 10.0]]), (64, 48), source="ann.json record 3")
    extractor = FeatureExtractor(ColorModel(), num_workers=0, progress=False)
    with pytest.raises(DataError, match=r"ann\.json record 3: image .*x\.png is 50x50 but the annotation says 64x48"):
        extractor.encode_regions([request])


# ---------------------------------------------------------------------------------- shared FG-OVD excerpt
def shared_fgovd_records(image_root: Path) -> list[dict]:
    """The shared FG-OVD excerpt's 200 records, with stand-in images at their sizes under ``image_root``."""
    records = [json.loads(line) for line in SHARED_FGOVD.read_text().splitlines() if line.strip()]
    for seed, record in enumerate({r["img_path"]: r for r in records}.values()):
        stand_in_image(image_root / record["img_path"], record["width"], record["height"], seed)
    return records


def one_box_per_forward_accuracy(model, processor, records: list[dict], image_root: Path) -> float:
    """Upstream way: one forward per box, the item's 11 captions padded to 77 tokens; correct when the
    positive scores at least as high as every negative."""
    correct = 0
    with torch.no_grad():
        for record in records:
            x, y, w, h = record["bbox"]
            batch = processor(images=str(image_root / record["img_path"]),
                              boxes=[torch.tensor([[x, y, x + w, y + h]])])
            box = batch["boxes"][0].clamp(0, processor.image_size)
            region = model.get_region_features(batch["pixel_values"], [box], normalize=True)
            captions = record["pos_expression"] + record["neg_expression"]
            texts = model.get_text_features(**processor(text=captions, text_kind="region"), normalize=True)
            scores = (region.float() @ texts.float().t())[0]
            correct += bool(scores[0] >= scores[1:].max())
    return correct / len(records)


def test_shared_fgovd_excerpt_matches_one_box_per_forward(checkpoints, tmp_path):
    records = shared_fgovd_records(tmp_path / "coco")
    benchmark = load_fgovd(SHARED_FGOVD, tmp_path / "coco", name="easy")
    assert len(benchmark.items) == len(records) == 200
    model = FGCLIPModel.from_pretrained(checkpoints / "fgclip").eval()
    processor = FGCLIPProcessor.from_pretrained(checkpoints / "fgclip")
    extractor = FeatureExtractor(Encoder(model, processor), batch_size=16, num_workers=0, progress=False)
    result = evaluate_fgovd(extractor, [benchmark])["easy"]
    reference = one_box_per_forward_accuracy(model, processor, records, tmp_path / "coco")
    assert result == {"accuracy": pytest.approx(reference), "num_items": 200}


def test_eval_command_in_bf16_matches_one_box_per_forward_under_bf16_autocast(checkpoints, tmp_path, monkeypatch):
    """``fgclip eval --bf16`` as users run it (the CPU's bf16 math-path attention, one autocast region
    per pass) against the upstream way under ``torch.autocast("cpu", bfloat16)``."""
    attention_dtypes, takes_math_path = set(), fgclip_modeling.takes_math_path
    monkeypatch.setattr(fgclip_modeling, "takes_math_path",
                        lambda query, key: attention_dtypes.add(query.dtype) or takes_math_path(query, key))
    records = shared_fgovd_records(tmp_path / "coco")
    fgovd = tmp_path / "fgovd"
    fgovd.mkdir()
    os.symlink(SHARED_FGOVD, fgovd / "easy.jsonl")
    output = tmp_path / "results"
    assert main(["eval", "--model", f"tiny={checkpoints / 'fgclip'}", "--tasks", "fgovd", "--datasets", "fgovd",
                 "--path", f"fgovd.dir={fgovd}", "--path", f"fgovd.images={tmp_path / 'coco'}", "--bf16",
                 "--output-dir", str(output), "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    assert attention_dtypes == {torch.bfloat16}  # every attention of the command ran in bf16
    report = json.loads((output / "results.json").read_text())
    model = FGCLIPModel.from_pretrained(checkpoints / "fgclip").eval()
    processor = FGCLIPProcessor.from_pretrained(checkpoints / "fgclip")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = one_box_per_forward_accuracy(model, processor, records, tmp_path / "coco")
    assert report["settings"]["bf16"] is True
    result = report["results"]["tiny"]["fgovd/easy"]
    assert (result["accuracy"], result["num_items"]) == (pytest.approx(reference), 200)


# ---------------------------------------------------------------------------------- invariance
@pytest.mark.numerics
def test_results_do_not_depend_on_batch_size(checkpoints, data_root, reference_report, tmp_path):
    report = run_evaluation(loaded_models(checkpoints), run_config(data_root, tmp_path, 1))
    assert set(report["results"]["fgclip"]) == {
        "fgovd/hard", "fgovd/medium", "boxcls/coco", "retrieval/coco", "retrieval/tsv/cn", "zeroshot/imagenet"}
    assert metric_values(report) == metric_values(reference_report)
    assert (tmp_path / "results.md").read_text().startswith("| benchmark | metric | n | fgclip | clip |")

    model = load_encoder(checkpoints / "fgclip")
    requests = [ImageRequest(str(p), np.array([[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, 40.0, 36.0]]), source=str(p))
                for p in sorted((data_root / "coco/val2017").iterdir())]
    one = FeatureExtractor(model, batch_size=1, text_batch_size=1, num_workers=0, progress=False)
    seven = FeatureExtractor(model, batch_size=7, text_batch_size=7, num_workers=0, progress=False)
    config = model.model.config
    image_terms = tower_terms(config.vision_config, 17)  # a batch of 7 sums in other blocks than one image
    assert_close_to_reference(seven.encode_images(requests), one.encode_images(requests), terms=image_terms)
    first, second = one.encode_regions(requests), seven.encode_regions(requests)
    assert_close_to_reference(second.features, first.features, terms=image_terms)
    assert first.features.shape == (2 * len(requests), 16) and first.offsets.tolist() == list(range(0, 19, 2))
    texts = [f"caption number {i} " + "word " * i for i in range(12)]
    assert_close_to_reference(seven.encode_texts(texts, "long"), one.encode_texts(texts, "long"),
                              terms=tower_terms(config.text_config, 248))


def test_results_do_not_depend_on_world_size(checkpoints, data_root, reference_report, tmp_path):
    """The command line under torchrun with 2 gloo processes gives the single-process results."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tools/eval_fgclip.py"), "--model", f"fgclip={checkpoints / 'fgclip'}",
        "--model", f"clip={checkpoints / 'clip'}", "--data-root", str(data_root),
        "--path", f"imagenet.classnames={data_root / 'classes.txt'}", "--output-dir", str(tmp_path),
        "--device", "cpu", "--batch-size", "7", "--text-batch-size", "7", "--workers", "1", "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["settings"]["world_size"] == 2
    assert report["models"]["clip"]["type"] == "clip"
    assert metric_values(report) == metric_values(reference_report)
    assert "| fgovd/hard | accuracy |" in (tmp_path / "results.md").read_text()


def test_template_sets_files_and_their_use(tmp_path):
    from fgclip.eval.runner import evaluate, prepare
    from fgclip.eval.templates import CHINESE_TEMPLATES, IMAGENET_TEMPLATES
    from fgclip.eval.zeroshot import load_templates

    assert load_templates("openai") == IMAGENET_TEMPLATES and load_templates("zh") == CHINESE_TEMPLATES
    assert all(template.count("{}") == 1 for template in CHINESE_TEMPLATES)
    listed = tmp_path / "templates.txt"
    listed.write_text("a {} thing\n\n  the {}  \n")
    assert load_templates(str(listed)) == ("a {} thing", "the {}")
    listed.write_text("a {} thing\nno slot here\n")
    with pytest.raises(DataError, match=r"templates\.txt line 2: a template needs exactly one \{\}"):
        load_templates(str(listed))
    with pytest.raises(DataError, match="neither a template set"):
        load_templates("klingon")

    class Recording(ColorModel):
        texts: list = []

        def encode_texts(self, texts, kind="short"):
            self.texts.extend(texts)
            return F.normalize(torch.ones(len(texts), 3), dim=-1)

    for folder in ("a_red", "b_blue"):
        (tmp_path / "imagenet" / "val" / folder).mkdir(parents=True)
        Image.new("RGB", (20, 20), COLORS[folder[2:]]).save(tmp_path / "imagenet" / "val" / folder / "0.png")
    (tmp_path / "names.txt").write_text("红色\n蓝色\n")
    prepared, _ = prepare(tmp_path, ["zeroshot"], ["imagenet"], {"imagenet.classnames": str(tmp_path / "names.txt")})
    model = Recording()
    evaluate(FeatureExtractor(model, num_workers=0, progress=False), prepared, templates=CHINESE_TEMPLATES)
    assert sorted(model.texts) == sorted(t.format(name) for name in ("红色", "蓝色") for t in CHINESE_TEMPLATES)


# ---------------------------------------------------------------------------------- registry
def test_a_new_benchmark_is_its_own_prepare_and_score_plus_one_registry_line(tmp_path, monkeypatch):
    """A toy benchmark (the mean colour of each image against colour names) runs through the runner's
    prepare / evaluate with nothing but its DatasetSpec added to the registry."""
    from fgclip.eval import runner
    from fgclip.eval.spec import DatasetSpec, single

    (tmp_path / "toy").mkdir()
    for name in ("red", "blue"):
        Image.new("RGB", (64, 64), COLORS[name]).save(tmp_path / "toy" / f"{name}.png")

    def prepare_toy(spec, paths, options):
        return single(spec, sorted(paths["dir"].glob("*.png")))

    def score_toy(extractor, prepared, context):
        requests = [ImageRequest(str(path), source=path.name) for path in prepared.payload]
        images = extractor.encode_images(requests)
        texts = extractor.encode_texts([f"a {path.stem} square" for path in prepared.payload], "short")
        return {prepared.label: {"accuracy": (images @ texts.T).argmax(1).eq(torch.arange(2)).float().mean().item()}}

    toy = DatasetSpec("toy", "zeroshot", "toy/colours", (("dir", "toy"),), "colour squares", prepare_toy, score_toy)
    monkeypatch.setattr(runner, "DATASETS", (*runner.DATASETS, toy))
    monkeypatch.setattr(runner, "DATASETS_BY_NAME", {**runner.DATASETS_BY_NAME, "toy": toy})
    prepared, _ = runner.prepare(tmp_path, datasets=["toy"])
    extractor = FeatureExtractor(ColorModel(), batch_size=2, num_workers=0, progress=False)
    results = runner.evaluate(extractor, prepared)
    assert results["toy/colours"]["accuracy"] == 1.0
