"""One family registry (fgclip.families): the built-in families are its entries, and a new family is one
model file plus one registry entry. Here that model file is the two classes below, putting transformers'
plain ``CLIPModel`` under the family API; registered, it runs ``fgclip eval`` on the shapes sample data,
and its FG-OVD accuracy equals a brute-force loop over the benchmark file with the model called directly."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from fgclip import FGCLIPConfig
from fgclip.cli import main
from fgclip.data.shapes import write_shapes_dataset
from fgclip.eval.cli import add_eval_arguments
from fgclip.families import FAMILIES, Family, get_family, model_type_choices, register_family
from fgclip.modeling_common import roi_pool
from fgclip.processing_common import DualEncoderProcessor
from fgclip.processing_fgclip import clip_bpe_tokenizer
from fgclip.training.config import ModelSettings


# ---------------------------------------------------------------------------------- the new family's model file
class PlainCLIPProcessor(DualEncoderProcessor):
    """CLIP's image processor and tokenizer under the family's processor call: every text kind is
    77 tokens, boxes are scaled with the squashed image."""

    minimal_padding = "longest"
    short_length = long_length = 77

    def __init__(self, image_processor=None, tokenizer=None):
        super().__init__(image_processor, tokenizer)

    @classmethod
    def from_pretrained(cls, directory, **kwargs):
        return cls(CLIPImageProcessor.from_pretrained(directory), clip_bpe_tokenizer())

    def _encode_text(self, texts, text_kind, padding):
        encoded = self.tokenizer(texts, padding=padding, truncation=True, max_length=77, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _encode_images(self, images, boxes):
        size = self.image_processor.size["height"]
        data = {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"]}
        if boxes is not None:
            data["boxes"] = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
                             * torch.tensor([size / i.width, size / i.height] * 2) for b, i in zip(boxes, images)]
        return data


class PlainCLIPModel(CLIPModel):
    """transformers' CLIP: global features as CLIP computes them, regions by RoIAlign of the projected
    last-layer patch tokens."""

    def get_image_features(self, pixel_values, **unused):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, input_ids, attention_mask=None, text_kind="short"):
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    def get_region_features(self, pixel_values, boxes, **unused):
        tokens = self.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]
        patches = self.visual_projection(self.vision_model.post_layernorm(tokens))
        side = int(patches.shape[1] ** 0.5)
        return roi_pool(patches.unflatten(1, (side, side)), boxes, self.config.vision_config.patch_size)


PLAIN_CLIP = Family("plain_clip", "plain CLIP", config=CLIPConfig, model=PlainCLIPModel,
                    processor=PlainCLIPProcessor, long_text_kind="short")


# ---------------------------------------------------------------------------------- tests
@pytest.fixture
def plain_clip_family():
    register_family(PLAIN_CLIP)
    yield PLAIN_CLIP
    FAMILIES.pop(PLAIN_CLIP.name)


def save_plain_clip(directory: Path) -> Path:
    tiny = FGCLIPConfig.tiny(image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=tiny.text_config.to_dict(), vision_config=tiny.vision_config.to_dict(),
                         projection_dim=tiny.projection_dim)).save_pretrained(directory)
    CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False).save_pretrained(directory)
    return directory


def test_builtin_families_are_registry_entries():
    assert list(FAMILIES)[:3] == ["fgclip", "fgclip2", "clip"]
    assert model_type_choices()[:4] == ("auto", "fgclip", "fgclip2", "clip")
    assert get_family("fgclip2").presets["tiny"]().model_type == "fgclip2"
    with pytest.raises(ValueError, match="unknown model family 'nope'; expected one of fgclip, fgclip2, clip"):
        get_family("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_family(FAMILIES["fgclip"])
    with pytest.raises(ValueError, match="model.family: expected one of fgclip, fgclip2, got 'clip'"):
        ModelSettings(family="clip")  # an evaluation-only family has no training recipe


def test_a_registered_family_is_a_command_line_model_type(plain_clip_family):
    import argparse

    parser = add_eval_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--model-type", "plain_clip"]).model_type == "plain_clip"


def brute_force_fgovd_accuracy(model, processor, rows: list[dict], image_root: Path) -> float:
    """FG-OVD accuracy with the model called directly: one box per forward pass, the positive counted
    correct when it scores at least as high as every negative (FG-CLIP's fgovd_eval)."""
    correct = 0
    with torch.no_grad():
        for row in rows:
            image = Image.open(image_root / row["img_path"]).convert("RGB")
            x, y, w, h = row["bbox"]
            batch = processor(images=[image], boxes=[torch.tensor([[x, y, x + w, y + h]])])
            region = F.normalize(model.get_region_features(**batch), dim=-1)
            texts = processor(text=row["pos_expression"][:1] + row["neg_expression"], padding="max_length")
            captions = F.normalize(model.get_text_features(texts["input_ids"], texts["attention_mask"]), dim=-1)
            scores = (region @ captions.T)[0]
            correct += bool(scores[0] >= scores[1:].max())
    return correct / len(rows)


def test_plain_clip_family_runs_fgclip_eval_on_the_sample_data(plain_clip_family, tmp_path, capsys):
    data = tmp_path / "shapes"
    write_shapes_dataset(data, seed=0, num_train=0, num_test=16, image_size=64)
    fgovd = tmp_path / "fgovd"
    fgovd.mkdir()
    for subset in ("hard", "easy"):
        os.symlink(data / f"fgovd_{subset}.jsonl", fgovd / f"{subset}.jsonl")
    checkpoint = save_plain_clip(tmp_path / "plain_clip")
    output = tmp_path / "results"

    assert main(["eval", "--model", f"plain={checkpoint}", "--model-type", "plain_clip", "--tasks", "fgovd",
                 "--datasets", "fgovd", "--path", f"fgovd.dir={fgovd}", "--path", f"fgovd.images={data}",
                 "--output-dir", str(output), "--device", "cpu", "--workers", "0", "--no-progress"]) == 0

    report = json.loads((output / "results.json").read_text())
    assert report["models"]["plain"]["type"] == "plain_clip"
    model = PlainCLIPModel.from_pretrained(checkpoint).eval()
    processor = PlainCLIPProcessor.from_pretrained(checkpoint)
    accuracies = []
    for subset in ("hard", "easy"):
        rows = [json.loads(line) for line in (data / f"fgovd_{subset}.jsonl").read_text().splitlines()]
        result = report["results"]["plain"][f"fgovd/{subset}"]
        assert result["num_items"] == len(rows) > 0
        assert result["accuracy"] == pytest.approx(brute_force_fgovd_accuracy(model, processor, rows, data))
        accuracies.append(result["accuracy"])
    assert max(accuracies) > 0  # the comparison is not of two zeros
    assert "plain" in capsys.readouterr().out
