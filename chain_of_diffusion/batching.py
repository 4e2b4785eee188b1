"""Run a network on fixed-size batches, so that a row's result does not depend on its batch-mates.

CPU kernels (oneDNN convolutions, GEMM) choose their blocking, and with it the order of their
floating-point sums, by the batch size; which sizes agree differs between CPUs (an Intel Xeon
agrees for every multiple of 8, an AVX-512 AMD EPYC does not). At one fixed batch size a row's
result depends only on that row. Calling every network through :func:`fixed_batches` makes an
image depend on its own seed and caption alone: not on ``sample.batch_size``, the process count,
or which other images or captions were encoded with it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

UNET_ROWS = 32  # rows per UNet call while sampling (the unconditional and conditional halves together)
TEXT_ROWS = 64  # captions per text-encoder call
VAE_ROWS = 8  # images per VAE encoder or decoder call (the VAE is heavy per row at full resolution)


def fixed_batches(fn: Callable[..., torch.Tensor], rows: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*chunk)`` over chunks of exactly ``rows`` rows of every tensor, concatenated.

    All ``tensors`` share their first dimension N; the last chunk is padded by repeating its first
    row and the padding is dropped from the result. Returns (N, ...) on ``fn``'s device.
    """
    n = tensors[0].shape[0]
    out = []
    for lo in range(0, n, rows):
        chunk = [t[lo : lo + rows] for t in tensors]
        extra = rows - chunk[0].shape[0]
        if extra:
            chunk = [torch.cat([c, c[:1].expand(extra, *c.shape[1:])]) for c in chunk]
        out.append(fn(*chunk)[: rows - extra])
    if not out:
        raise ValueError("fixed_batches: no rows")
    return torch.cat(out)

