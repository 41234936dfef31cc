"""Train a detector (e.g. F-ViT with FG-CLIP on OV-COCO) with mmengine's Runner.

    python tools/train_det.py configs/fvit_fgclip_b16.py
    torchrun --nproc_per_node=8 tools/train_det.py configs/fvit_fgclip_b16.py --amp
    python tools/train_det.py CONFIG --resume                 # from the latest checkpoint in work_dir
    python tools/train_det.py CONFIG --cfg-options train_dataloader.batch_size=4

Started by torchrun (``LOCAL_RANK`` set) it trains data-parallel; without a GPU the
process group uses gloo.
"""
from __future__ import annotations

import sys
from importlib import import_module

from fgclip.errors import run_command

if __name__ == "__main__" and (status := run_command(lambda _: import_module("detection"))):
    sys.exit(status)  # mmcv or mmdet missing: one line saying to run `make setup-detection`
# ruff: noqa: E402
import argparse
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from detection.checkpoint import check_checkpoint_file, loading_checkpoint
from detection.config_file import load_config, naming_config
from detection.launch import setup_launcher


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a detector with mmengine's Runner")
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", help="resume from CHECKPOINT, or from the latest one in work_dir")
    parser.add_argument("--amp", action="store_true",
                        help="mixed-precision training (AmpOptimWrapper; loss scale from the config's amp_loss_scale)")
    parser.add_argument("--auto-scale-lr", action="store_true", help="scale lr by total batch size / auto_scale_lr.base_batch_size")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace) -> Config:
    """The config with the command-line choices applied (launcher, work_dir, resume, AMP, lr scaling)."""
    cfg = load_config(args.config, args.cfg_options)
    setup_launcher(cfg)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = cfg.get("amp_loss_scale", "dynamic")
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        check_checkpoint_file(args.resume)
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with naming_config(args.config):
        cfg = setup_config(args)
        resumed = f"the latest checkpoint in {cfg.work_dir}" if cfg.get("resume") else None
        with loading_checkpoint(cfg.get("load_from") or resumed):
            Runner.from_cfg(cfg).train()


if __name__ == "__main__":
    sys.exit(run_command(main))
