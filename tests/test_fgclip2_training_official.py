"""FG-CLIP 2 training batches against the official training data code: pixel values, patch grids
and mapped boxes of mixed-size batches equal what 360CVGroup/FG-CLIP b1af1cda8ae62089664251670c7819b25e07a0bc
(`fgclip2/train/train_fgclip2.py`: `LazySupervisedBboxDataset` + `DataCollatorForSupervisedDataset`
with `transformers.Siglip2ImageProcessor`, transformers 4.56.2, Pillow 13.0.0) printed for the
same records (tests/data/fgclip2_official/train, made by make/make_training_batches.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

from fgclip import FGCLIP2Processor
from fgclip.data import FineHARDCollator, FineHARDDataset, FineHARDShardDataset, write_finehard_shards
from fgclip.errors import ConfigError
from fgclip.training.config import load_config
from numerics import assert_close_to_reference

pytestmark = pytest.mark.numerics

OFFICIAL = Path(__file__).parent / "data" / "fgclip2_official"
TRAIN = OFFICIAL / "train"
EXPECTED = json.loads((TRAIN / "expected.json").read_text())
PATCH = 16
RECIPE = Path(__file__).parents[1] / "configs" / "fgclip2" / "stage2_base.yaml"


@pytest.fixture(scope="module")
def processor():
    """The official launch's image processor (SigLIP 2 NaFlex, patch 16) under the size rule."""
    return FGCLIP2Processor(AutoTokenizer.from_pretrained(OFFICIAL), Siglip2ImageProcessorPil(patch_size=PATCH),
                            max_num_patches="auto")


@pytest.fixture(scope="module")
def dataset(processor):
    return FineHARDDataset(TRAIN / "records.json", TRAIN, processor, small_image_size=EXPECTED["box_image_size"])


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def assert_official(pixel_values, pixel_attention_mask, spatial_shapes, boxes, official):
    assert list(pixel_values.shape) == official["pixel_values_shape"]
    assert spatial_shapes.tolist() == official["spatial_shapes"]
    assert pixel_attention_mask.sum(dim=1).tolist() == official["pixel_attention_mask_sum"]
    assert pixel_values[:, 0, :8].tolist() == official["pixel_values_first"]
    assert sha256(pixel_values) == official["pixel_values_sha256"]  # every value, bit for bit
    for image_boxes, grid_boxes in zip(boxes, official["grid_boxes"], strict=True):
        # ours: input pixels; official: normalised box x grid (its `_denormalize_boxes`); the same
        # number up to float32 rounding (ours: original pixels x resize factor; official: a division
        # and a product)
        assert_close_to_reference(image_boxes / PATCH, torch.tensor(grid_boxes).reshape(-1, 4), terms=4)


@pytest.mark.parametrize("batch", range(len(EXPECTED["batches"])))
def test_a_batch_equals_the_official_training_batch(dataset, batch):
    official = EXPECTED["batches"][batch]
    samples = dataset.__getitems__(official["indices"])
    stacked = {key: torch.stack([sample[key] for sample in samples])
               for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
    assert_official(**stacked, boxes=[sample["boxes"] for sample in samples], official=official)


def test_the_budget_is_the_batch_largest_not_each_image(dataset):
    """Image 2 (150 x 130: 72 patches of 16) alone takes 128 patches; beside the small image 1
    (100 x 300, first resized to 224 x 224: 196 patches) the batch takes 256, and its grid grows."""
    alone = dataset[2]
    assert alone["pixel_values"].shape[0] == 128 and alone["spatial_shapes"].tolist() == [10, 12]
    mixed = dataset.__getitems__([0, 1, 2])[2]
    assert mixed["pixel_values"].shape[0] == 256 and mixed["spatial_shapes"].tolist() == [15, 17]


def test_dataloader_batches_through_the_collator_equal_the_official(dataset, processor):
    batches = [official["indices"] for official in EXPECTED["batches"]]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=FineHARDCollator(processor))
    for batch, official in zip(loader, EXPECTED["batches"], strict=True):
        assert_official(batch["pixel_values"], batch["pixel_attention_mask"], batch["spatial_shapes"],
                        batch["boxes"], official)


def test_shard_batches_equal_the_official(processor, tmp_path):
    official = EXPECTED["batches"][0]  # images 0, 1, 2: the first batch of a stream of batches of 3
    write_finehard_shards(TRAIN / "records.json", TRAIN, str(tmp_path / "part-%03d.tar"))
    stream = FineHARDShardDataset(str(tmp_path / "part-000.tar"), processor, batch_size=3,
                                  small_image_size=EXPECTED["box_image_size"])
    samples = list(stream)[:3]
    assert_official(*(torch.stack([s[key] for s in samples])
                      for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes")),
                    boxes=[s["boxes"] for s in samples], official=official)


def test_recipe_and_defaults_follow_the_official_launch(tmp_path):
    """Launch: --max_num_patches 1024 (NaFlex on; the collator's size rule decides) --box_image_size 512;
    the official DataArguments default box_image_size is 224."""
    recipe = load_config(RECIPE)
    assert recipe.data.processor_options("fgclip2") == {"max_num_patches": "auto"}
    assert recipe.data.dataset_options("fgclip2", 512) == {"small_image_size": 512}
    train = tmp_path / "train.jsonl"
    train.write_text("")
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"model: {{family: fgclip2, tokenizer: {OFFICIAL}}}\ndata: {{train: {train}}}\n")
    config = load_config(plain)
    assert config.data.processor_options("fgclip2") == {"max_num_patches": "auto"}
    assert config.data.dataset_options("fgclip2", 8) == {"small_image_size": 224}
    off = load_config(plain, ["data.small_image_size=0", "data.max_num_patches=256", "data.shards=true"])
    assert off.data.dataset_options("fgclip2", 8) == {"small_image_size": None, "batch_size": 8}
    assert off.data.processor_options("fgclip2") == {"max_num_patches": 256}
    with pytest.raises(ConfigError, match="data.max_num_patches"):
        load_config(plain, ["data.max_num_patches=big"])
    with pytest.raises(ConfigError, match=r"data.small_image_size: FG-CLIP 2 only"):
        load_config(plain, ["model.family=fgclip", "data.small_image_size=512"])
