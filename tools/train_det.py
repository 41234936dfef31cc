"""Train a detector (e.g. F-ViT with FG-CLIP on OV-COCO) with mmengine's Runner.

    python tools/train_det.py configs/fvit_fgclip_b16.py
    torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip_b16.py --amp
    python tools/train_det.py CONFIG --amp --amp-dtype bfloat16   # mixed precision without a GPU
    python tools/train_det.py CONFIG --resume                 # from the latest checkpoint in work_dir
    python tools/train_det.py CONFIG --cfg-options train_dataloader.batch_size=4
    python tools/train_det.py CONFIG --verbose                # also print the config and environment

Started by torchrun (``LOCAL_RANK`` set) it trains data-parallel; without a GPU the
process group uses gloo. ``--amp`` is fp16 with the config's static ``amp_loss_scale`` (the
reference); ``--amp-dtype bfloat16`` needs no loss scale, and runs on the CPU too. The terminal
shows progress, losses, warnings and metrics; the config and environment go to the log file in the
run directory (``--verbose``: to the terminal as well).
"""
from __future__ import annotations

import sys
from importlib import import_module

from fgclip.errors import CommandParser, ConfigError, run_command

if __name__ == "__main__" and (status := run_command(lambda _: import_module("detection"))):
    sys.exit(status)  # mmcv or mmdet missing: one line saying to run `make setup-detection`
# ruff: noqa: E402
import argparse
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.device import get_device
from mmengine.runner import Runner

from detection.checkpoint import check_checkpoint_file, loading_checkpoint
from detection.config_file import load_config, naming_config
from detection.launch import setup_launcher
from detection.runner import QuietRunner
from fgclip.launch import exit_distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(description="Train a detector with mmengine's Runner")
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", help="resume from CHECKPOINT, or from the latest one in work_dir")
    parser.add_argument("--amp", action="store_true",
                        help="mixed-precision training (mmengine's AmpOptimWrapper)")
    parser.add_argument("--amp-dtype", choices=("float16", "bfloat16"),
                        help="autocast dtype with --amp: float16 (default, the reference; loss scale from the config's "
                             "amp_loss_scale; GPU only) or bfloat16 (no loss scaling; also on the CPU)")
    parser.add_argument("--auto-scale-lr", action="store_true", help="scale lr by total batch size / auto_scale_lr.base_batch_size")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the config, the environment and the hook order (always in the run's log file)")
    args = parser.parse_args(argv)
    if args.amp_dtype and not args.amp:
        raise ConfigError(f"--amp-dtype {args.amp_dtype}: only used with --amp")
    args.amp_dtype = args.amp_dtype or "float16"
    if args.amp and args.amp_dtype == "float16" and get_device() == "cpu":
        raise ConfigError("--amp-dtype float16 (the default of --amp) needs a GPU: on the CPU add --amp-dtype bfloat16")
    return args


def setup_config(args: argparse.Namespace) -> Config:
    """The config with the command-line choices applied (launcher, work_dir, resume, AMP, lr scaling)."""
    cfg = load_config(args.config, args.cfg_options)
    setup_launcher(cfg)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        setup_amp(cfg, args.amp_dtype)
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        check_checkpoint_file(args.resume)
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def setup_amp(cfg: Config, dtype: str) -> None:
    """``cfg.optim_wrapper`` as mmengine's ``AmpOptimWrapper`` autocasting to ``dtype``.

    float16 takes the config's ``amp_loss_scale`` (a float: static; default "dynamic"). bfloat16
    has float32's exponent range, so its ``GradScaler`` is built disabled (the loss is not
    multiplied, no step is skipped); without a GPU it is :class:`~detection.amp.CPUAmpOptimWrapper`.
    """
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.dtype = dtype
    if dtype == "float16":
        cfg.optim_wrapper.loss_scale = cfg.get("amp_loss_scale", "dynamic")
    elif get_device() == "cpu":
        cfg.optim_wrapper.type = "CPUAmpOptimWrapper"
    else:
        cfg.optim_wrapper.loss_scale = dict(enabled=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with naming_config(args.config):
        cfg = setup_config(args)
        resumed = f"the latest checkpoint in {cfg.work_dir}" if cfg.get("resume") else None
        with loading_checkpoint(cfg.get("load_from") or resumed):
            (Runner if args.verbose else QuietRunner).from_cfg(cfg).train()


if __name__ == "__main__":
    sys.exit(exit_distributed(run_command(main)))
