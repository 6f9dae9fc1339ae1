"""Brute-force neighborhood attention: every query gathers its k*k keys. The test oracle.

It materialises a ``(B, H, W, k, k, heads, D)`` copy of the keys and values, so it is slow and
memory-hungry; it exists to be obviously right, not fast.
"""

from __future__ import annotations

import torch

from .checks import check_na2d_args
from .windows import window_index


def na2d_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
):
    """Neighborhood attention on ``(B, H, W, heads, D)`` tensors by explicit gathering."""
    check_na2d_args(query, key, value, kernel_size, dilation, rpb)
    batch, height, width, heads, head_dim = query.shape
    scale = head_dim**-0.5 if scale is None else scale
    ih, bh = window_index(height, kernel_size, dilation, query.device)
    iw, bw = window_index(width, kernel_size, dilation, query.device)
    rows, cols = ih[:, None, :, None], iw[None, :, None, :]  # broadcast to (H, W, k, k)
    keys, values = key[:, rows, cols], value[:, rows, cols]  # (B, H, W, k, k, heads, D)
    logits = torch.einsum("bijhd,bijxyhd->bhijxy", query * scale, keys)
    if rpb is not None:
        logits = logits + rpb[:, bh[:, None, :, None], bw[None, :, None, :]]  # (heads, H, W, k, k)
    weights = logits.flatten(-2).softmax(-1)  # (B, heads, H, W, k*k)
    out = torch.einsum("bhijn,bijnhd->bijhd", weights, values.flatten(3, 4))
    return (out, weights) if return_weights else out
