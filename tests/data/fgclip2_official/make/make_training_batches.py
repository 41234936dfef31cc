"""Step 3 (official venv, transformers 4.56.2, FG-CLIP b1af1cd at $FGCLIP_OFFICIAL): FineHARD records with
images of mixed sizes, and the batches the official FG-CLIP 2 training data code makes of them
(`fgclip2/train/train_fgclip2.py`: `LazySupervisedBboxDataset` + `DataCollatorForSupervisedDataset`, with
`transformers.Siglip2ImageProcessor` of patch 16 as the official launch builds it) -> train/expected.json."""
from pathlib import Path
import hashlib, json, os, sys, types
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.environ["FGCLIP_OFFICIAL"])
sys.modules["fgclip2.train.local_trainer"] = types.SimpleNamespace(CLIPTrainer=None)  # the trainer is not needed
from transformers import AutoTokenizer, Siglip2ImageProcessor
from fgclip2.train.train_fgclip2 import DataArguments, DataCollatorForSupervisedDataset, LazySupervisedBboxDataset
from fgclip2.model.strcs.fgclip2 import FG_CLIP2_Model

OFF = Path(__file__).resolve().parents[1]
TRAIN = OFF / "train"
SIZES = [(200, 150), (100, 300), (150, 130), (60, 40), (300, 230)]  # (width, height)
BATCHES = [[0, 1, 2], [0, 2], [3, 2], [4, 0]]
BOX_IMAGE_SIZE = 224  # the official DataArguments default (the launch sets 512)

rng = np.random.default_rng(7)
records = []
for index, (width, height) in enumerate(SIZES):
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = np.clip(smooth + rng.integers(-2, 3, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(TRAIN / f"{index}.png")
    regions = []
    for k in range(3 if index != 2 else 5):
        x1, y1 = rng.uniform(0, 0.5, 2).round(4)
        x2, y2 = (np.array([x1, y1]) + rng.uniform(0.1, 0.5, 2)).round(4)
        negatives = {str(n): f"a blue car {n}" for n in range(10)}
        regions.append({"bbox": [float(x1), float(y1), float(x2), float(y2), 0.9], "short_expr": f"a red car {k}",
                        "long_expr": f"a small red car on the grass {k}", "flag_short_neg": int(k != 1),
                        "short_expr_negs": negatives if k != 1 else {}})
    records.append({"f_path": f"{index}.png", "caption": "a red car on the green grass",
                    "short_caption": "red car", "bbox_info": regions})
(TRAIN / "records.json").write_text(json.dumps(records, indent=1))

arguments = DataArguments(data_path=str(TRAIN / "records.json"), image_folder=str(TRAIN), max_num_patches=1024,
                          add_box_loss=True, use_hard_neg=True, box_image_size=BOX_IMAGE_SIZE,
                          base_seq_length=64, max_seq_length=196)
processor = Siglip2ImageProcessor(patch_size=16)
dataset = LazySupervisedBboxDataset(arguments.data_path, arguments, processor, AutoTokenizer.from_pretrained(OFF))
collator = DataCollatorForSupervisedDataset(preprocess=processor, is_naflex=True)
out = {"box_image_size": BOX_IMAGE_SIZE, "sizes": SIZES, "batches": []}
for indices in BATCHES:
    instances = [dataset[i] for i in indices]
    batch = collator(instances)
    pixel_values = batch["pixel_values"].contiguous()
    shapes = batch["spatial_shapes"]
    boxes = batch["box_infos"].reshape(len(indices), -1, 4)
    grid_boxes = []
    for row, (height, width) in enumerate(shapes.tolist()):
        feature_map = torch.zeros(1, 1, height, width)
        mapped = FG_CLIP2_Model._denormalize_boxes(boxes[row][None], feature_map)[0]
        grid_boxes.append(mapped[: int(batch["box_nums"][row])].tolist())
    out["batches"].append({
        "indices": indices,
        "max_img_token": [int(instance["max_img_token"]) for instance in instances],
        "pixel_values_shape": list(pixel_values.shape),
        "pixel_values_sha256": hashlib.sha256(pixel_values.numpy().tobytes()).hexdigest(),
        "pixel_values_sum": [float(v) for v in pixel_values.double().sum(dim=(1, 2))],
        "pixel_values_first": pixel_values[:, 0, :8].tolist(),
        "pixel_attention_mask_sum": batch["pixel_attention_mask"].sum(dim=1).tolist(),
        "spatial_shapes": shapes.tolist(),
        "grid_boxes": grid_boxes,
    })
(TRAIN / "expected.json").write_text(json.dumps(out, indent=1))
print(json.dumps([{k: v for k, v in b.items() if k not in ("grid_boxes", "pixel_values_first")} for b in out["batches"]], indent=1))
