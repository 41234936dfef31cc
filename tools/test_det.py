"""Evaluate a trained detector with mmengine's Runner and print its metrics as JSON.

    python tools/test_det.py configs/fvit_fgclip_b16.py work_dirs/fvit_fgclip_b16/epoch_3.pth
    torchrun --nproc_per_node=8 tools/test_det.py CONFIG CHECKPOINT --out metrics.json

For OV-COCO configs the metrics are ``ov_coco/AP50_novel``, ``ov_coco/AP50_base`` and
``ov_coco/AP50_all``; for OV-LVIS configs ``ov_lvis/AP``, ``ov_lvis/APr``, ``ov_lvis/APc``,
``ov_lvis/APf`` and the other LVIS box APs (percent). The config and environment go to the log
file in the run directory, not the terminal, unless ``--verbose``.
"""
from __future__ import annotations

import sys
from importlib import import_module

from fgclip.errors import CommandParser, print_output, run_command, write_atomically

if __name__ == "__main__" and (status := run_command(lambda _: import_module("detection"))):
    sys.exit(status)  # mmcv or mmdet missing: one line saying to run `make setup-detection`
# ruff: noqa: E402
import argparse
import json
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from mmengine.runner import Runner

from detection.checkpoint import check_checkpoint_file, loading_checkpoint
from detection.config_file import load_config, naming_config
from detection.launch import setup_launcher
from detection.runner import QuietRunner
from fgclip.launch import exit_distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(description="Evaluate a detector checkpoint with mmengine's Runner")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (.pth) written by tools/train_det.py")
    parser.add_argument("--work-dir", help="where logs go (default work_dirs/<config name>)")
    parser.add_argument("-o", "--out", help="also write the metrics to this JSON file")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the config, the environment and the hook order (always in the run's log file)")
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace) -> Config:
    check_checkpoint_file(args.checkpoint)
    cfg = load_config(args.config, args.cfg_options)
    setup_launcher(cfg)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with naming_config(args.config), loading_checkpoint(args.checkpoint):
        metrics = (Runner if args.verbose else QuietRunner).from_cfg(setup_config(args)).test()
    if is_main_process():
        text = json.dumps(metrics, indent=2)
        if args.out:
            os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
            write_atomically(args.out, text + "\n")
        print_output(text)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_distributed(run_command(main)))
