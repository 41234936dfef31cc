"""The launch environment of a training command: a DeepSpeed run started without a launcher.

DeepSpeed (through accelerate) needs a process group, which accelerate starts only from a
launcher's environment (``torchrun`` sets ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` and the
rendezvous). :func:`one_process_world` gives a plain ``python`` start the environment of
``torchrun --standalone --nproc_per_node 1``, so the same DeepSpeed setting trains in one process;
both ``tools/train_fgclip.py`` and ``mllm.train`` run through it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Iterator

import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")
MPI_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")  # mpirun / mpiexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def one_process_world(setting: str | None) -> Iterator[None]:
    """Around a run whose DeepSpeed ``setting`` is given (``None``: no DeepSpeed, nothing to do).

    With none of ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` present, sets what ``torchrun --standalone
    --nproc_per_node 1`` would (rank 0 of 1, rendezvous on 127.0.0.1 at a free port), so accelerate
    starts a one-process group (gloo on the CPU, nccl on a GPU); at the end the group is closed and the
    variables are put back. A partial launcher environment, several MPI processes without one, or
    DeepSpeed missing raise a :class:`~fgclip.errors.ConfigError` naming ``setting``
    (e.g. ``"configs/fgclip/stage2_vitb16.yaml: training.deepspeed"`` or ``"--deepspeed"``).
    """
    if not setting:
        yield
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{setting}: DeepSpeed is not installed; pip install deepspeed, or train without it")
    launched = [name for name in LAUNCHER_VARIABLES if name in os.environ]
    mpi = [name for name in MPI_WORLD_SIZE_VARIABLES if os.environ.get(name, "1") not in ("", "0", "1")]
    if mpi and not launched:
        raise ConfigError(f"{setting}: started as {os.environ[mpi[0]]} MPI processes ({mpi[0]}) without "
                          "RANK / LOCAL_RANK / WORLD_SIZE; start with torchrun or deepspeed")
    if launched:
        missing = [name for name in LAUNCHER_VARIABLES + RENDEZVOUS_VARIABLES if name not in os.environ]
        if missing:
            raise ConfigError(f"{setting}: {', '.join(launched)} set in the environment but not "
                              f"{', '.join(missing)}; start with torchrun (or deepspeed), or unset "
                              f"{' '.join(launched)} to train in one process")
        yield
        return
    world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
    previous = {name: os.environ.get(name) for name in world}
    os.environ.update(world)
    logger.info("DeepSpeed without a launcher: one process, RANK=0 WORLD_SIZE=1 on 127.0.0.1:%s "
                "(torchrun --nproc_per_node N for N)", world["MASTER_PORT"])
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def exit_distributed(status: int) -> int:
    """``status`` for ``sys.exit``; in a multi-process run (torchrun), first take the process group down
    and leave without the interpreter's teardown, where a finished rank occasionally aborts
    ("terminate called without an active exception", SIGABRT) while torch's C++ threads are destroyed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return status
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
