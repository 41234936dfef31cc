"""Tolerances for comparing one computation done two ways that round differently: two kernels (math
and sdpa attention, the folded and the plain MLP), two summation orders (a batch and its rows one by
one, two ranks and one process), our code and a reference implementation or an official tensor.

The bound. A sum of n terms computed in floating point is within gamma_n * sum|x_i| of the exact
sum, gamma_n = n u / (1 - n u) ~ n u, with u = eps / 2 the unit roundoff, whatever the order or
blocking of the kernel (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1). That
worst case grows as n; rounding errors independent and of mean zero grow as sqrt(n): the sum is
within lambda * sqrt(n) * u * sum|x_i| except with probability below 2 n exp(-lambda^2 / 2) (Higham
and Mary, A new approach to probabilistic rounding error analysis, SIAM J. Sci. Comput. 41(5),
2019), below 1e-6 for lambda = 7 and n up to 20000. The bound taken is the smaller of the two,
min(n, 7 sqrt(n)) * u: the worst case up to n = 49. A chain of operations adds its operations'
bounds (to first order), so n counts every term summed along the chain (the sum of its reduction
lengths) and every intermediate value rounded to the dtype. Two computations each within the bound
of the exact value are within twice it of each other: min(n, 7 sqrt(n)) * eps * sum|x_i|. The
per-element sum|x_i| is not known; the largest magnitude of the reference stands in for it (its
infinity norm), so an element that cancels to near zero is held to the size of the tensor's
values, not to its own.
"""
from __future__ import annotations

import math

import torch

LAMBDA = 7.0


def tower_terms(config, tokens: int) -> int:
    """n for one pass of a pre-norm transformer tower of ``config`` over ``tokens`` tokens.

    Per layer: two layer norms (mean and variance, 2 x hidden each), the query/key/value and output
    projections (hidden each), the scores (head dim), the softmax and its weighted sum (tokens each),
    the MLP (hidden + intermediate); one more such layer for the final norm and the projection or
    pooling head.
    """
    hidden = config.hidden_size
    per_layer = 7 * hidden + hidden // config.num_attention_heads + 2 * tokens + config.intermediate_size
    return (config.num_hidden_layers + 1) * per_layer


def assert_close_to_reference(actual, expected, *, terms: int, dtype: torch.dtype | None = None,
                              scale: float | None = None, msg: str | None = None) -> None:
    """Assert max|actual - expected| <= min(terms, 7 sqrt(terms)) * eps(dtype) * scale, element by element.

    ``actual`` and ``expected``: tensors of one shape, or numbers. ``terms``: n of the module
    docstring, counted from the computation's sizes. ``dtype``: the precision the two computations
    round in, by default the coarser of the tensors' dtypes. ``scale``: the magnitude of the summed
    terms, by default max|expected|; give it where the reference cancels to zero up to rounding (a
    gradient that is zero analytically), from the tensor whose sum it is.
    """
    if dtype is None:
        dtypes = [value.dtype for value in (actual, expected) if isinstance(value, torch.Tensor)]
        if not dtypes:
            raise TypeError("two plain numbers: give the dtype they were computed in")
        dtype = max(dtypes, key=lambda kind: torch.finfo(kind).eps)
    actual_64, expected_64 = (value.detach().to("cpu", torch.float64) if isinstance(value, torch.Tensor)
                              else torch.tensor(value, dtype=torch.float64) for value in (actual, expected))
    if scale is None:
        scale = float(expected_64.abs().max()) if expected_64.numel() else 0.0
    bound = min(terms, LAMBDA * math.sqrt(terms)) * torch.finfo(dtype).eps * scale
    note = f"bound for {terms} terms in {dtype} at scale {scale:.3g}: {bound:.3g}" + (f"; {msg}" if msg else "")
    torch.testing.assert_close(actual_64, expected_64, rtol=0, atol=bound, msg=lambda text: f"{text}\n{note}")
