"""Time upstream FG-CLIP v1's own stage-2 step on the CPU: its ``FGCLIPModel.forward`` with
``add_box_loss`` and ``use_hard_neg`` under bf16 autocast (the only precision it runs in), backward,
AdamW; a one-process gloo group stands in for its ``dist.get_rank()``. Used by ``bench/train_step.py``.

    UPSTREAM_PY bench/upstream_train_step.py UPSTREAM_SRC BATCH_FILE STEPS WARMUP WEIGHTS_FILE

BATCH_FILE holds `bench/stage2_workload.py`'s tensors, WEIGHTS_FILE the seed-0 fgclip model's
state dict (safetensors, upstream's key names), so both sides start from the same weights; texts are padded as upstream's data
pipeline pads them (long captions to 248 tokens, every other text to 77, with eos). Prints one
JSON line: seconds per timed step, losses, the FLOPs of one step (torch's FlopCounterMode) and the
keys of upstream's model that the weights file did not fill.
"""
import json
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

source, batch_file, steps, warmup, weights_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, source)
from fgclip.model.clip_strc.configuration_clip import CLIPConfig  # noqa: E402  (upstream's package)
from fgclip.model.clip_strc.fgclip import FGCLIPModel  # noqa: E402

EOS = 49407


def padded(ids, width):
    return F.pad(ids, (0, width - ids.shape[1]), value=EOS)


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
batch = torch.load(batch_file)
images, boxes = batch["boxes"].shape[:2]
size = batch["pixel_values"].shape[-1]
inputs = {
    "image": batch["pixel_values"],
    "text_long": padded(batch["long"], 248),
    "text_short": padded(batch["short"], 77),
    "box_infos": batch["boxes"] / size,
    "box_texts": padded(batch["region"], 77),
    "box_nums": torch.full((images,), boxes),
    "hard_infos": batch["boxes"] / size,
    "hard_texts": padded(batch["hard"], 77),
    "hard_nums": torch.full((images,), boxes),
}
tower = {"hidden_act": "quick_gelu", "projection_dim": 512}
config = CLIPConfig(
    text_config={**tower, "hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                 "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408},
    vision_config={**tower, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                   "num_hidden_layers": 12, "image_size": size, "patch_size": 16},
    projection_dim=512,
)
torch.manual_seed(0)
model = FGCLIPModel(config).train()
missing, unexpected = model.load_state_dict(load_file(weights_file), strict=False)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, betas=(0.9, 0.98),
                              eps=1e-6, weight_decay=0.001)


def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, add_box_loss=True, use_hard_neg=True).loss
    loss.backward()
    optimizer.step()
    return loss.item()


losses, times = [], []
for index in range(warmup + steps):
    start = time.perf_counter()
    losses.append(step())
    if index >= warmup:
        times.append(time.perf_counter() - start)
with FlopCounterMode(display=False) as counter:
    step()
print(json.dumps({"seconds_per_step": sum(times) / len(times), "losses": losses,
                  "flops": counter.get_total_flops(), "weights_missing": missing, "weights_unexpected": unexpected}))
dist.destroy_process_group()
