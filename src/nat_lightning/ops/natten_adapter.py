"""NATTEN (>= 0.21) as a backend. NATTEN is optional: it is imported only in here.

NATTEN 0.20+ has no relative positional bias and, without its compiled CUDA library, runs a
forward-only Flex fallback that builds the full N x N score matrix. :func:`natten_unavailable`
is the single place that decides whether it may serve a call.
"""

from __future__ import annotations

import importlib.util

import torch

_NATTEN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def natten_version() -> tuple[int, ...] | None:
    """NATTEN's version as a tuple, or None when it is not installed."""
    if importlib.util.find_spec("natten") is None:
        return None
    import natten

    return tuple(int(p) for p in natten.__version__.split(".")[:3] if p.isdigit())


def natten_unavailable(
    query: torch.Tensor, rpb, return_weights: bool, needs_grad: bool
) -> str | None:
    """Why NATTEN cannot serve this call, or None when it can."""
    version = natten_version()
    if version is None:
        return "natten is not installed (pip install --no-build-isolation 'natten>=0.21')"
    if version < (0, 21):
        return f"natten>=0.21 is required, found {'.'.join(map(str, version))}"
    if rpb is not None:
        return "NATTEN 0.20+ has no relative positional bias (rpb); use backend='torch'"
    if return_weights:
        return "NATTEN's fused kernels do not return attention weights"
    if query.dtype not in _NATTEN_DTYPES:
        return f"NATTEN supports {_NATTEN_DTYPES}, got {query.dtype}"
    if query.device.type != "cuda" and needs_grad:
        return "NATTEN has no backward pass without CUDA (FlexAttention CPU is forward-only)"
    return None


def na2d_natten(query, key, value, kernel_size: int, dilation: int = 1, scale: float | None = None):
    """Neighborhood attention through ``natten.na2d``; same layout, no rpb."""
    import natten

    return natten.na2d(query, key, value, kernel_size=kernel_size, dilation=dilation, scale=scale)
