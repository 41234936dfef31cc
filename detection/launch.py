"""Launcher set-up for the detection tools: plain ``python`` or ``torchrun``, with or without GPUs."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.config import Config


def setup_launcher(cfg: Config) -> Config:
    """Set ``cfg.launcher`` from the environment (``torchrun`` sets ``LOCAL_RANK``).

    mmengine's ``pytorch`` launcher assumes one GPU per process (``torch.cuda.set_device``,
    DDP ``device_ids``). Without CUDA this starts the gloo process group itself and wraps the
    model in a CPU ``MMDistributedDataParallel`` (no ``device_ids``).
    """
    if "LOCAL_RANK" not in os.environ:
        cfg.launcher = "none"
        return cfg
    cfg.launcher = "pytorch"
    if not torch.cuda.is_available():
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        cfg.model_wrapper_cfg = dict(
            type="MMDistributedDataParallel",
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get("find_unused_parameters", False),
        )
    return cfg
