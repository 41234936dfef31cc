"""Run upstream FG-CLIP v1's own ``fgclip/eval/fgovd_eval.py`` on the CPU, unchanged: its
``.cuda()`` model placement becomes a no-op, nothing else is touched. Used by ``bench/eval.py``.

    UPSTREAM_PY bench/upstream_fgovd.py UPSTREAM_SRC [fgovd_eval.py arguments]

The script reads ``fgovd_json/1_attributes_llava.jsonl`` relative to the working directory and
prints ``i / N  precision: p`` after every item.
"""
import runpy
import sys

import torch

source = sys.argv[1]
sys.path.insert(0, source)
torch.nn.Module.cuda = lambda self, device=None: self
sys.argv = [f"{source}/fgclip/eval/fgovd_eval.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
