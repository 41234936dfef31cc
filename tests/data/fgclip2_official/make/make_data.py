"""Step 1 (any venv with tokenizers + PIL + numpy): tokenizer, images and benchmark files."""
from pathlib import Path
import json, os, random, sys
import numpy as np
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

MAIN = str(Path(__file__).resolve().parents[2])
OFF = f"{MAIN}/fgclip2_official"
CN = f"{MAIN}/chinese"
rng = np.random.default_rng(0)
random.seed(0)

CHARS = list("一只红色的汽车在草地上小狗猫蓝天白云人骑自行车街道两个孩子玩球桌子椅子木头房子门窗树花水河船鸟飞")
WORDS = "a red car blue bird on the green grass small wooden chair with metal legs photo of dog cat".split()
vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
for token in CHARS + WORDS + [":", ",", ".", "n", "v"]:
    vocab.setdefault(token, len(vocab))

def save_tokenizer(directory):
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                    lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                           special_tokens=[("<bos>", 2), ("<eos>", 1)])
    os.makedirs(directory, exist_ok=True)
    backend.save(f"{directory}/tokenizer.json")
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "<eos>",
               "bos_token": "<bos>", "unk_token": "<unk>", "model_max_length": 196, "padding_side": "right"},
              open(f"{directory}/tokenizer_config.json", "w"), indent=2)

def image(width, height):
    """A smooth random colour field (a 4x3 grid of colours upsampled bicubically) plus mild noise."""
    base = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(base).astype(np.int16) + rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))

def caption(n, upper=False):
    text = "".join(random.choice(CHARS) for _ in range(n))
    if upper:
        text += " RED car"
    return text

save_tokenizer(OFF)
json.dump({"image_processor_type": "Fgclip2ImageProcessor", "do_resize": True, "resample": 2, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
           "image_std": [0.5, 0.5, 0.5], "patch_size": 4, "max_num_patches": 256, "processor_class": "Fgclip2Processor"},
          open(f"{OFF}/preprocessor_config.json", "w"), indent=2)
os.makedirs(f"{OFF}/images", exist_ok=True)
# patch 4: native patches 45 -> 128, 320 -> 576, 36 -> 128, 660 -> 784, 210 -> 256
for index, size in enumerate([(37, 23), (80, 64), (13, 50), (120, 90), (60, 56)]):
    image(*size).save(f"{OFF}/images/{index}.png")

# ---- Chinese benchmarks, laid out as a data root
def jpg(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image(*size).save(path, quality=90)

sizes = [(37, 23), (80, 64), (13, 50), (60, 56), (44, 40), (30, 70)]
os.makedirs(f"{CN}/long_cn/images", exist_ok=True)
with open(f"{CN}/long_cn/lit_cn.txt", "w", encoding="utf-8") as handle:
    for index, size in enumerate(sizes):
        jpg(f"{CN}/long_cn/images/lit_{index}.jpg", size)
        handle.write(f"images/lit_{index}.jpg\t{caption(40 + 25 * index, upper=index == 2)}\n")
with open(f"{CN}/long_cn/docci_cn.txt", "w", encoding="utf-8") as handle:
    for index, size in enumerate(sizes[:4]):
        jpg(f"{CN}/long_cn/images/docci_{index}.jpg", size)
        handle.write(f"images/docci_{index}.jpg\t{caption(150 + 10 * index)}\n")

os.makedirs(f"{CN}/coco_cn", exist_ok=True)
with open(f"{CN}/coco_cn/coco_cn_test.txt", "w", encoding="utf-8") as handle:
    for index, size in enumerate((sizes * 2)[:12]):
        split = "train" if index % 2 else "val"
        name = f"COCO_{split}2014_{index + 1:012d}"
        jpg(f"{CN}/coco/{split}2014/{name}.jpg", size)
        for n in range(5):
            handle.write(f"{name}#zhm#{n}\t{caption(6 + n, upper=n == 1)}\n")
        if index == 1:
            handle.write("this line does not match the pattern and is skipped\n")

os.makedirs(f"{CN}/flickr30k_cna", exist_ok=True)
with open(f"{CN}/flickr30k_cna/flickr30k_cna_test.txt", "w", encoding="utf-8") as handle:
    for index, size in enumerate((sizes * 2)[:10]):
        name = f"{1000 + index}"
        jpg(f"{CN}/flickr30k/flickr30k-images/{name}.jpg", size)
        for n in range(5):
            words = " ".join(random.choice(CHARS) + (":n" if n == 2 else "") for _ in range(5 + n))
            handle.write(f"{name}#zhb#{n}\t {words} \n")

os.makedirs(f"{CN}/BoxClass-CN/images", exist_ok=True)
categories = [{"id": i + 1, "name": name} for i, name in enumerate(["小狗", "红色 汽车", "木头 椅子", "蓝天", "鸟", "RED car"])]
images, annotations = [], []
for index, size in enumerate([(80, 64), (60, 56), (120, 90)]):
    jpg(f"{CN}/BoxClass-CN/images/box_{index}.jpg", size)
    images.append({"id": 10 + index, "file_name": f"box_{index}.jpg", "width": size[0], "height": size[1]})
    for k in range(3):
        w, h = size[0] * (0.3 + 0.1 * k), size[1] * (0.4 + 0.05 * k)
        x, y = (size[0] - w) * k / 3, (size[1] - h) * (2 - k) / 3
        annotations.append({"id": len(annotations) + 1, "image_id": 10 + index, "bbox": [x, y, w, h],
                            "category_id": 1 + (index * 3 + k) % 6})
json.dump({"categories": categories, "images": images, "annotations": annotations},
          open(f"{CN}/BoxClass-CN/valid_category_data_total_zh.json", "w", encoding="utf-8"), ensure_ascii=False,
          indent=1)
print(len(vocab))
