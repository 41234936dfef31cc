"""Evaluate FG-CLIP / CLIP checkpoints on FG-OVD, box classification, retrieval and zero-shot
classification in one command (also available as ``fgclip eval``).

    python tools/eval_fgclip.py --model PATH --tasks fgovd,boxcls,retrieval,zeroshot --data-root DIR
    torchrun --nproc_per_node 8 tools/eval_fgclip.py --model PATH --data-root DIR --bf16
    python tools/eval_fgclip.py --list-datasets --data-root DIR     # expected layout

See docs/evaluation.md.
"""
import sys

from fgclip.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
