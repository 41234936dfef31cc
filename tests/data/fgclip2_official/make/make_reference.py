"""Step 2 (official venv, transformers 4.56.2, FG-CLIP b1af1cd on sys.path): the tiny official checkpoint
and every reference value, computed with the official classes."""
from pathlib import Path
import io, json, math, os, sys, contextlib
sys.path.insert(0, os.environ["FGCLIP_OFFICIAL"])  # a checkout of 360CVGroup/FG-CLIP b1af1cd
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoTokenizer
from fgclip2.model.strcs.fgclip2 import FG_CLIP2_Model
from fgclip2.model.strcs.modeling_fgclip2 import Fgclip2Model
from fgclip2.model.strcs.configuration_fgclip2 import Fgclip2Config
from fgclip2.model.strcs.image_processing_fgclip2 import Fgclip2ImageProcessor

OFF = str(Path(__file__).resolve().parents[1])
torch.manual_seed(0)
tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
config = Fgclip2Config(
    text_config=dict(tower, vocab_size=80, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                     keep_len=20, longtext_len=196),
    vision_config=dict(tower, patch_size=4, num_patches=16))
model = FG_CLIP2_Model(config)
with torch.no_grad():
    for parameter in model.parameters():
        parameter.add_(torch.randn_like(parameter) * 0.05)
    model.logit_scale.fill_(math.log(10.0))
    model.logit_bias.fill_(-1.0)
# as the official launch (train_fgclip2.py) adds them before training; saved with the model
model.logit_scale_finegraind = torch.nn.Parameter(torch.ones([]) * 4.6052)
model.logit_scale_hardneg = torch.nn.Parameter(torch.ones([]) * 4.6052)
model.save_pretrained(OFF, safe_serialization=True)

model = FG_CLIP2_Model.from_pretrained(OFF).eval()
processor = Fgclip2ImageProcessor.from_pretrained(OFF)
tokenizer = AutoTokenizer.from_pretrained(OFF)
out, meta = {}, {}
images = [Image.open(f"{OFF}/images/{i}.png").convert("RGB") for i in range(5)]
with torch.no_grad():
    for i, image in enumerate(images):
        inputs = processor(images=image, return_tensors="pt")
        out[f"single{i}.pixel_values"] = inputs["pixel_values"]
        out[f"single{i}.spatial_shapes"] = inputs["spatial_shapes"]
        out[f"single{i}.pixel_attention_mask"] = inputs["pixel_attention_mask"]
        out[f"single{i}.image_embeds"] = model.get_image_features(**inputs)
    mixed = [images[0], images[1], images[2]]
    inputs = processor(images=mixed, return_tensors="pt")
    for key in ("pixel_values", "spatial_shapes", "pixel_attention_mask"):
        out[f"mixed.{key}"] = inputs[key]
    out["mixed.image_embeds"] = model.get_image_features(**inputs)
    out["mixed.dense"] = model.get_image_dense_feature(**inputs)
    sizes = [(im.height, im.width) for im in mixed]
    regions = [[[1.5, 2.0, 30.0, 20.0], [0.0, 0.0, 37.0, 23.0]], [[10.0, 5.5, 70.0, 60.0]], [[2.0, 10.0, 12.0, 45.0]]]
    meta["regions"] = regions
    for i, feats in enumerate(model.get_image_region_features(**inputs, image_sizes=sizes, region_infos=regions)):
        out[f"mixed.regions{i}"] = feats
    texts = ["a red car on the grass", "一只 红色 的 汽车", "RED car", "小狗 在 草地 上 玩球"]
    long_texts = ["两个孩子在街道上骑自行车" * 6, "a small wooden chair with metal legs"]
    meta["texts"], meta["long_texts"] = texts, long_texts
    for name, batch, length, walk in (("short", texts, 64, "short"), ("box", texts, 64, "box"),
                                      ("long", long_texts, 196, "long"), ("long64", long_texts, 64, "long")):
        encoded = tokenizer(batch, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        out[f"text.{name}.input_ids"] = encoded["input_ids"]
        out[f"text.{name}.attention_mask"] = encoded["attention_mask"]
        embeddings = model.text_model.embeddings
        masks = embeddings.mask1, embeddings.mask2
        if length < 196 and walk == "long":  # the official masks are 196 rows: at L < 196 it fails to broadcast
            embeddings.mask1, embeddings.mask2 = masks[0][:length], masks[1][:length]
        out[f"text.{name}.embeds"] = model.get_text_features(**encoded, walk_type=walk)
        embeddings.mask1, embeddings.mask2 = masks
    encoded = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    logits = Fgclip2Model.forward(model, input_ids=encoded["input_ids"], pixel_values=inputs["pixel_values"],
                                  pixel_attention_mask=inputs["pixel_attention_mask"],
                                  spatial_shapes=inputs["spatial_shapes"], walk_type="box")
    out["forward.box.logits_per_image"] = logits.logits_per_image
save_file({k: v.contiguous() for k, v in out.items()}, f"{OFF}/expected.safetensors")
json.dump(meta, open(f"{OFF}/expected.json", "w", encoding="utf-8"), ensure_ascii=False, indent=1)
print("features done")
