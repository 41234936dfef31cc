"""Keep freed host memory in the process, so CPU runs stop paying page faults on every tensor.

glibc's ``malloc`` serves blocks above its mmap threshold (at most 32 MiB, and every block above it)
with a fresh ``mmap`` and unmaps them on ``free``; it also trims the top of its heap. A CPU
training step or evaluation pass allocates the same large activations again and again, so each
one starts on pages the kernel must fault in and zero: measured on the ViT-B/16 stage-2 step
(docs/benchmarks.md), about 580,000 minor faults per step, a tenth of its time, most of it inside
the first write of each matmul's output. :func:`keep_freed_memory` turns both off for the process
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)``): freed blocks stay in the
heap and the next step reuses them without a fault. The price is that the process keeps its peak
heap until it exits, which a training or evaluation process reaches anyway.

The CPU commands (``fgclip eval --device cpu``, CPU training) call it; GPU runs, whose large
buffers are device memory, leave the host allocator as it is. Other C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (see the module docstring); ``True`` once applied.

    Idempotent; a no-op returning ``False`` on a C library other than glibc.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
    if _applied:
        logger.debug("glibc malloc keeps freed memory for reuse (no mmap blocks, no heap trimming)")
    return _applied
