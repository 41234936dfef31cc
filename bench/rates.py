"""The machine's measured matmul rate, for the benchmarks' "fraction of the machine" figures."""
from __future__ import annotations

import time

import torch


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a (size x size) @ (size x size) product in ``dtype`` on the CPU, current threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def describe_rate(name: str, flops: float, seconds: float, peak_gflops: float) -> str:
    achieved = flops / seconds / 1e9
    return (f"{name}: {flops / 1e12:.2f} TFLOP in {seconds:.2f} s = {achieved:.0f} GFLOP/s, "
            f"{100 * achieved / peak_gflops:.0f}% of the measured matmul rate ({peak_gflops:.0f} GFLOP/s)")
