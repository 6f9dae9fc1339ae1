"""Argument checks shared by every neighborhood-attention backend."""

from __future__ import annotations

import torch


def check_na2d_args(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
) -> None:
    """Raise ``ValueError`` naming the field, its value and what was expected."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(
                f"{name} must have rank 5 (batch, height, width, heads, head_dim), "
                f"got {name}.shape={tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {name}.dtype={t.dtype}")
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            "query, key and value must have the same shape, got "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}, "
            f"value.shape={tuple(value.shape)}"
        )
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(
            f"query, key and value must share a dtype, got {query.dtype=}, {key.dtype=}, {value.dtype=}"
        )
    if key.device != query.device or value.device != query.device:
        raise ValueError(
            "query, key and value must be on one device, got "
            f"{query.device=}, {key.device=}, {value.device=}"
        )
    if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size=}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation=}")
    _, height, width, heads, _ = query.shape
    for axis, length in (("height", height), ("width", width)):
        if kernel_size * dilation > length:
            raise ValueError(
                f"kernel_size * dilation must not exceed the feature map's {axis}: got "
                f"{kernel_size=} * {dilation=} = {kernel_size * dilation} > {axis}={length}; "
                "pad the input (the NAT layers do) or use a smaller kernel or dilation"
            )
    if rpb is not None:
        expected = (heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
        if tuple(rpb.shape) != expected:
            raise ValueError(
                f"rpb must have shape (heads, 2k-1, 2k-1)={expected}, got rpb.shape={tuple(rpb.shape)}"
            )
        if rpb.device != query.device:
            raise ValueError(
                f"rpb must be on the query's device, got {rpb.device=}, {query.device=}"
            )
