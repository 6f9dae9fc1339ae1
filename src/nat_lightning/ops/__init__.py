"""Neighborhood attention as pure functions, and the one function that picks a backend.

Backends:
- ``"torch"``: :func:`na2d_torch`, pure PyTorch, any device, forward and backward, rpb, dilation:
  the row kernel (:mod:`.rows`) where it applies, the tiled kernel (:mod:`.tiled`) elsewhere.
- ``"fused"``: :func:`na2d_fused`, a C++/OpenMP CPU kernel built on first use (:mod:`.build`,
  ``csrc/``); fp32, bf16 and fp16, forward and backward, rpb, dilation; no attention weights.
- ``"natten"``: NATTEN >= 0.21, only where it can run the call fully (no rpb; backward on CUDA).
- ``"flex"``: :func:`na2d_flex`, FlexAttention with a window block mask and an rpb
  ``score_mod``; for GPUs (compiled); forward-only on the CPU. Never picked by ``auto``.
- ``"reference"``: :func:`na2d_reference`, the brute-force oracle used by the tests.
- ``"auto"``: NATTEN on CUDA where it can serve the call; on the CPU ``"fused"`` where it is built
  and serves the call, except where every window is the whole map (the torch backend's dense
  attention is faster there); otherwise ``"torch"``. ``backend="torch"`` (the models' config key
  ``attention_backend``) or ``NAT_LIGHTNING_FUSED=0`` turns the fused kernel off.
"""

from __future__ import annotations

import torch

from .checks import check_na2d_args
from .flex import na2d_flex
from .fused import fused_unavailable, na2d_fused
from .natten_adapter import na2d_natten, natten_unavailable
from .reference import na2d_reference
from .rows import na2d_torch
from .tiled import na2d_tiled

BACKENDS = ("auto", "torch", "fused", "natten", "flex", "reference")


def select_backend(
    backend: str,
    query: torch.Tensor,
    rpb,
    return_weights: bool = False,
    kernel_size: int = 0,
    dilation: int = 1,
) -> str:
    """Resolve ``backend`` for this call; raise if an explicit choice cannot serve it.

    ``kernel_size`` and ``dilation``, where given, let ``auto`` keep the torch backend's dense
    attention for maps whose every window is the whole map (NAT's last stage at 224 px): there
    it measured 2x the fused kernel's speed (one 16-lane block holds only 7 queries).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend=}")
    if backend in ("torch", "reference"):
        return backend
    needs_grad = torch.is_grad_enabled() and (
        query.requires_grad or (rpb is not None and rpb.requires_grad)
    )
    if backend == "flex":
        if return_weights:
            raise ValueError(
                "backend='flex' cannot serve this call: it does not return attention weights"
            )
        if needs_grad and query.device.type == "cpu":
            raise ValueError(
                "backend='flex' cannot serve this call: FlexAttention has no backward on the CPU"
            )
        return "flex"
    if (
        backend == "auto"
        and query.device.type == "cpu"
        and _windows_are_the_map(query, kernel_size, dilation)
    ):
        return "torch"
    if backend == "fused" or (backend == "auto" and query.device.type == "cpu"):
        reason = fused_unavailable(query, return_weights)
        if backend == "fused" and reason is not None:
            raise ValueError(f"backend='fused' cannot serve this call: {reason}")
        if reason is None:
            return "fused"
    reason = natten_unavailable(query, rpb, return_weights, needs_grad)
    if backend == "natten":
        if reason is not None:
            raise ValueError(f"backend='natten' cannot serve this call: {reason}")
        return "natten"
    # auto: off CUDA NATTEN's fallback is quadratic, so the torch kernels always win there
    return "natten" if reason is None and query.device.type == "cuda" else "torch"


def _windows_are_the_map(query: torch.Tensor, kernel_size: int, dilation: int) -> bool:
    """Every dilation group of the map is ``kernel_size`` square: na2d_torch's dense path."""
    height, width = query.shape[1], query.shape[2]
    return (
        not (height % dilation or width % dilation)
        and height // dilation == width // dilation == kernel_size
    )


def na2d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_weights: bool = False,
):
    """2-D neighborhood attention on ``(batch, height, width, heads, head_dim)`` tensors.

    Every query attends to the ``kernel_size**2`` keys of its window (shifted, not padded, at
    the borders; dilation ``d`` attends within the ``d x d`` interleaved groups). ``rpb`` of shape
    ``(heads, 2k-1, 2k-1)`` is added to the logits; ``scale`` defaults to ``head_dim**-0.5``.
    With ``return_weights`` it also returns the softmax weights, ``(B, heads, H, W, k*k)``.
    """
    check_na2d_args(query, key, value, kernel_size, dilation, rpb)
    name = select_backend(backend, query, rpb, return_weights, kernel_size, dilation)
    if name == "natten":
        return na2d_natten(query, key, value, kernel_size, dilation, scale)
    if name == "flex":
        return na2d_flex(query, key, value, kernel_size, dilation, rpb, scale)
    if name == "fused":
        return na2d_fused(query, key, value, kernel_size, dilation, rpb, scale)
    impl = na2d_reference if name == "reference" else na2d_torch
    return impl(query, key, value, kernel_size, dilation, rpb, scale, return_weights=return_weights)


def na2d_qkv(
    qkv: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_weights: bool = False,
):
    """:func:`na2d` on a fused projection's output ``(batch, height, width, 3, heads, head_dim)``.

    The same result as ``na2d(*qkv.unbind(3), ...)``; the torch backend then returns one packed
    gradient for ``qkv`` instead of three that autograd stacks, and so does the fused backend.
    """
    if qkv.dim() != 6 or qkv.shape[3] != 3:
        raise ValueError(
            f"qkv must be (batch, height, width, 3, heads, head_dim), got qkv.shape={tuple(qkv.shape)}"
        )
    query, key, value = qkv.unbind(3)  # the paths below check the arguments
    name = select_backend(backend, query, rpb, return_weights, kernel_size, dilation)
    if name == "torch":
        return na2d_torch(
            query, key, value, kernel_size, dilation, rpb, scale, return_weights, qkv=qkv
        )
    if name == "fused":
        return na2d_fused(query, key, value, kernel_size, dilation, rpb, scale, qkv=qkv)
    return na2d(query, key, value, kernel_size, dilation, rpb, scale, backend, return_weights)


__all__ = [
    "BACKENDS",
    "na2d",
    "na2d_flex",
    "na2d_fused",
    "na2d_natten",
    "na2d_qkv",
    "na2d_reference",
    "na2d_tiled",
    "na2d_torch",
    "select_backend",
]
