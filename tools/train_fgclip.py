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
the command that resumes from it, and exit status 130.
"""
import argparse
import json
import logging
import os
import shlex
import sys
import threading
from pathlib import Path

import torch

from fgclip.errors import CommandParser, close_progress_bars, run_command
from fgclip.training import last_complete_checkpoint, load_config, train


EXIT_INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT


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
    distributed = torch.distributed.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        result = train(config, resume=args.resume)
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
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if main_process:
        print(f"final model: {result.final_model_dir}")
        print(result.skipped_summary)
    if distributed:
        # Everything is written and the process group is down. Leave without the interpreter's
        # teardown: there, a finished multi-process run occasionally aborts ("terminate called
        # without an active exception", SIGABRT) while torch's C++ threads are destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
