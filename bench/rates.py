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


def sustained_gflops(dtype: torch.dtype, seconds: float = 10.0, size: int = 2048) -> float:
    """Mean GFLOP/s of back-to-back (size x size) products in ``dtype`` over ``seconds``: what the
    machine keeps up over a long run (a shared or power-capped CPU slows down within seconds, so the
    best of a few products, :func:`matmul_gflops`, can lie well above it)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    products, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        products += 1
    return 2 * size**3 * products / (time.perf_counter() - start) / 1e9


def describe_rate(name: str, flops: float, seconds: float, peak_gflops: float) -> str:
    achieved = flops / seconds / 1e9
    return (f"{name}: {flops / 1e12:.2f} TFLOP in {seconds:.2f} s = {achieved:.0f} GFLOP/s, "
            f"{100 * achieved / peak_gflops:.0f}% of the measured matmul rate ({peak_gflops:.0f} GFLOP/s)")
