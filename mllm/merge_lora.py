"""Fold a LoRA finetune (``mllm.train --lora``) into a standalone LLaVA directory.

    python -m mllm.merge_lora --adapter OUTPUT_OF_LORA_RUN --output MERGED_DIR [--base STAGE1_DIR]

The adapter directory holds the LoRA weights of the language model and the fully trained
projector (peft ``modules_to_save``); the base is the assembled model the run started from
(by default the ``base_model_name_or_path`` recorded in the adapter config). The merged
directory loads with :func:`mllm.load_llava` and needs neither the base nor the adapter.
"""
from __future__ import annotations

import argparse
import os
import sys

from peft import PeftConfig, PeftModel
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from fgclip.errors import CheckpointError, CommandParser, run_command

from .builder import load_llava, save_llava


def merge_lora(
    adapter: str | os.PathLike, base: str | os.PathLike | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The base model with the adapter's LoRA deltas added and its projector swapped in."""
    base = base or PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if not base or not os.path.isdir(base):
        raise CheckpointError(f"{base}: base model directory not found (pass --base)")
    model, processor = load_llava(base)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if os.path.isfile(os.path.join(adapter, "processor_config.json")):
        processor = AutoProcessor.from_pretrained(adapter)
    return merged, processor


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="output directory of a --lora training run")
    parser.add_argument("--output", required=True, help="where to write the merged model")
    parser.add_argument("--base", default=None, help="assembled model the LoRA run started from")
    args = parser.parse_args(argv)
    model, processor = merge_lora(args.adapter, args.base)
    save_llava(model, processor, args.output)


if __name__ == "__main__":
    sys.exit(run_command(main))
