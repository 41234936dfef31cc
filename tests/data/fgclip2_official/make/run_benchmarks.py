"""Step 3 (official venv): the official Chinese benchmark scripts on the small files (range(1000) / range(5000)
replaced by the file's image / caption counts; BoxClass-CN on one CPU gloo rank). Prints each script's output."""
from pathlib import Path
import argparse, contextlib, io, json, os, sys
sys.path.insert(0, os.environ["FGCLIP_OFFICIAL"])  # a checkout of 360CVGroup/FG-CLIP b1af1cd
import torch
from transformers import AutoTokenizer
from fgclip2.model.strcs.fgclip2 import FG_CLIP2_Model
from fgclip2.model.strcs.image_processing_fgclip2 import Fgclip2ImageProcessor
from fgclip2.eval import long_trans_cn, coco_cn_small, flicker_cna_small

OFF = str(Path(__file__).resolve().parents[1])
CN = str(Path(__file__).resolve().parents[2] / "chinese")
model = FG_CLIP2_Model.from_pretrained(OFF).eval()
processor = Fgclip2ImageProcessor.from_pretrained(OFF)
tokenizer = AutoTokenizer.from_pretrained(OFF)
results = {}

def run(name, function, args, cwd=None):
    buffer = io.StringIO()
    here = os.getcwd()
    if cwd:
        os.chdir(cwd)
    with contextlib.redirect_stdout(buffer):
        function(model, processor, tokenizer, "cpu", args)
    os.chdir(here)
    lines = [l for l in buffer.getvalue().splitlines() if ": " not in l]
    results[name] = lines
    print(name, lines)

for stem in ("lit_cn", "docci_cn"):
    run(stem, long_trans_cn.eval_long_cn, argparse.Namespace(ann_file=f"{CN}/long_cn/{stem}.txt", max_length=196,
                                                              image_size=224, walk_type="long"), cwd=f"{CN}/long_cn")
run("coco_cn", coco_cn_small.eval_coco_cn, argparse.Namespace(ann_file=f"{CN}/coco_cn/coco_cn_test.txt", max_length=64,
                                                              image_folder=f"{CN}/coco", naflex=True))
run("flickr30k_cna", flicker_cna_small.eval_flicker30k_cn,
    argparse.Namespace(ann_file=f"{CN}/flickr30k_cna/flickr30k_cna_test.txt", image_folder=f"{CN}/flickr30k/flickr30k-images/"))
json.dump(results, open("benchmarks.json", "w"), indent=1)
