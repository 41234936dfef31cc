"""Train FG-CLIP from a YAML recipe (configs/fgclip/*.yaml).

    python tools/train_fgclip.py configs/fgclip/stage2_vitb16.yaml data.train=finehard.jsonl
    torchrun --nproc_per_node 8 tools/train_fgclip.py configs/fgclip/stage2_vitb16.yaml
    python tools/train_fgclip.py CONFIG --resume          # from the last complete checkpoint

Started with plain ``python``, a DeepSpeed recipe runs as a one-rank launch (RANK=0, WORLD_SIZE=1 on
127.0.0.1). The GPU recipes' bf16 / tf32 on a machine without a CUDA GPU: add ``training.use_cpu=true
training.tf32=false`` (the error line says so).

Overrides are ``section.key=value`` (sections: model, data, loss, training). A bad recipe, data
file or checkpoint prints ``error: <file>[:<line>]: <what>`` and exits with status 2 (``--debug``
shows the traceback). The resolved recipe is written to ``training.output_dir/recipe.json``
(``--verbose`` prints it too). Ctrl-C stops with one line naming the last complete checkpoint and
the command that resumes from it, and exit status 130: while steps run, after the step in progress
(and its checkpoint, if one is due); a second Ctrl-C stops at once.
"""
import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from fgclip.errors import CommandParser, close_progress_bars, run_command
from fgclip.launch import exit_distributed
from fgclip.training import last_complete_checkpoint, load_config, train


EXIT_INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT


class StopBetweenSteps(TrainerCallback):
    """Ctrl-C while training steps run raises ``KeyboardInterrupt`` when the next step begins.

    Python raises it wherever the main thread is, and there it can land in a finalizer (a tqdm bar's
    or a DataLoader iterator's ``__del__``): Python drops it there and training goes on, at times with
    a lock left held, so the run hangs. Here the first Ctrl-C only sets a flag; a second one, or one
    outside the steps (loading, indexing), raises at once. Under torchrun every rank stops at the
    same step: the flag is reduced over the ranks. DataLoader workers, forked with this handler, let
    their parent decide (a terminal's Ctrl-C reaches them too)."""

    def __init__(self, announce: bool):
        self.announce = announce
        self.process = os.getpid()
        self.stepping = False
        self.requested = False

    def on_sigint(self, signum, frame) -> None:
        if os.getpid() != self.process:
            return
        if not self.stepping or self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            os.write(2, b"\nCtrl-C: stopping before the next step (Ctrl-C again stops now)\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.stepping = True

    def on_train_end(self, args, state, control, **kwargs):
        self.stepping = False

    def on_step_begin(self, args, state, control, **kwargs):
        requested = self.requested
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([int(requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            raise KeyboardInterrupt


def interrupted(output_dir: Path, argv: list[str]) -> str:
    """The line printed on Ctrl-C: where the last complete checkpoint is and how to resume."""
    checkpoint = last_complete_checkpoint(output_dir)
    command = shlex.join(["python", "tools/train_fgclip.py", *(a for a in argv if a != "--resume"), "--resume"])
    if checkpoint is None:
        return f"interrupted: no complete checkpoint in {output_dir} yet; {command} starts over"
    return f"interrupted: last complete checkpoint {checkpoint}; resume with: {command}"


def main(argv=None) -> int:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="resume from the last complete checkpoint of training.output_dir, or from a given one")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept f_path values that are absolute or leave data.image_root")
    parser.add_argument("--verbose", action="store_true", help="print the resolved recipe")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = args.overrides + (["data.allow_outside_root=true"] if args.allow_outside_root else [])
    config = load_config(args.config, overrides)
    main_process = int(os.environ.get("RANK", "0")) == 0  # set by torchrun
    output_dir = Path(config.training.get("output_dir") or ".")
    if main_process and args.verbose:
        print(json.dumps(config.to_dict(), indent=2, default=str))
    stop = StopBetweenSteps(announce=main_process)
    signal.signal(signal.SIGINT, stop.on_sigint)
    try:
        result = train(config, resume=args.resume, callbacks=[stop])
    except KeyboardInterrupt:
        # The interrupted DataLoader's resource-sharing thread may still fail ("connection reset by
        # peer") while this process ends: its traceback would follow the line below. Silence threads,
        # then leave without the interpreter's teardown, where it would print one too.
        threading.excepthook = lambda args: None
        if main_process:
            close_progress_bars()
            print(interrupted(output_dir, argv if argv is not None else sys.argv[1:]), file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if main_process:
        print(f"final model: {result.final_model_dir}")
        print(result.skipped_summary)
    return exit_distributed(0)


if __name__ == "__main__":
    sys.exit(run_command(main))
