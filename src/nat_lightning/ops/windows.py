"""Where each query's neighborhood lies along one axis: NATTEN's window arithmetic.

Dilation ``d`` splits an axis into ``d`` interleaved groups (positions with the same ``i % d``).
Inside its group a query sees ``k`` consecutive group members, centred on itself where it can be
and shifted (never padded) at the borders.
"""

from __future__ import annotations

import torch


def window_start(length: int, kernel_size: int, dilation: int, device=None) -> torch.Tensor:
    """First neighbor of every position, in group coordinates. Shape ``(length,)``."""
    pos = torch.arange(length, device=device)
    group_len = (length - pos % dilation + dilation - 1) // dilation
    start = (pos // dilation - kernel_size // 2).clamp(min=0)
    return torch.minimum(start, group_len - kernel_size)


def window_index(length: int, kernel_size: int, dilation: int, device=None):
    """Neighbor positions and rpb offsets of every position along one axis.

    Returns ``(index, bias_index)``, both ``(length, kernel_size)``: ``index[i, a]`` is the
    position of the ``a``-th neighbor of ``i``; ``bias_index[i, a]`` indexes the rpb axis of
    size ``2k-1`` (``k-1`` is "same position").
    """
    pos = torch.arange(length, device=device)
    neighbor = window_start(length, kernel_size, dilation, device)[:, None] + torch.arange(
        kernel_size, device=device
    )  # (L, k), group coordinates
    index = pos[:, None] % dilation + dilation * neighbor
    bias_index = kernel_size - 1 + neighbor - (pos // dilation)[:, None]
    return index, bias_index
