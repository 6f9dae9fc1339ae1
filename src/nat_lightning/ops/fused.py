"""The fused C++/OpenMP CPU kernel (``csrc/``) behind two ``torch.library`` custom ops.

``nat_lightning::na2d_fused`` and ``nat_lightning::na2d_fused_backward`` with fake (meta)
implementations: torch.compile keeps each whole in its graph, as it does the row kernel's ops.
The forward keeps nothing but its output; the backward recomputes the softmax. Serves fp32, bf16
and fp16 (fp32 inside) on the CPU, any odd kernel size, dilation, head_dim and map size, strided
and packed (``na2d_qkv``) inputs. The kernel is built on first use (:mod:`.build`); where it
cannot be, :func:`fused_unavailable` says why and ``backend="auto"`` keeps the torch kernels.
"""

from __future__ import annotations

import torch

from . import build
from .checks import check_na2d_args
from .rows import backward_fakes

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
Tensor = torch.Tensor  # the ops' annotations, which torch.library reads into their schemas


def fused_unavailable(
    query: torch.Tensor, return_weights: bool = False, may_build: bool = True
) -> str | None:
    """Why the fused kernel cannot serve this call, or None. Builds it on the first eager call
    (``may_build``); while torch.compile traces, only a kernel an earlier call built serves."""
    if query.device.type != "cpu":
        return f"it runs on the CPU, got {query.device=}"
    if query.dtype not in DTYPES:
        return f"it serves {DTYPES}, got {query.dtype=}"
    if return_weights:
        return "it does not return attention weights"
    if torch.jit.is_tracing():
        return "a traced export (ONNX) records the torch kernels, not an opaque extension"
    compiling = torch.compiler.is_compiling()
    module = build.loaded() if compiling or not may_build else build.load()
    if module is None:
        return build.unavailable_reason() or build.disabled_reason() or "it is not built yet"
    return None


def _kernel():
    module = build.load()
    if module is None:
        raise RuntimeError(f"the fused na2d kernel is unavailable: {build.unavailable_reason()}")
    return module


def _rpb32(rpb: torch.Tensor | None) -> torch.Tensor | None:
    return None if rpb is None else rpb.detach().to(torch.float32).contiguous()


@torch.library.custom_op("nat_lightning::na2d_fused", mutates_args=())
def _fused_attention(
    query: Tensor,
    key: Tensor | None,
    value: Tensor | None,
    rpb: Tensor | None,
    kernel_size: int,
    dilation: int,
    scale: float,
) -> Tensor:
    """The output, (B, H, W, heads, D). ``key`` and ``value`` None: ``query`` is the packed qkv."""
    if key is None:
        query, key, value = query.unbind(3)
    return _kernel().forward(query, key, value, _rpb32(rpb), kernel_size, dilation, scale)


@_fused_attention.register_fake
def _(query, key, value, rpb, kernel_size, dilation, scale):
    shape = query.shape if key is not None else (*query.shape[:3], *query.shape[4:])
    return query.new_empty(shape)


@torch.library.custom_op("nat_lightning::na2d_fused_backward", mutates_args=())
def _fused_attention_backward(
    grad_out: Tensor,
    output: Tensor,
    query: Tensor,
    key: Tensor | None,
    value: Tensor | None,
    rpb: Tensor | None,
    kernel_size: int,
    dilation: int,
    scale: float,
    want_rpb: bool,
) -> tuple[Tensor, Tensor]:
    """``(grad_qkv, grad_rpb)``: the first packed ``(B, H, W, 3, heads, D)``; grad_rpb is empty
    unless ``want_rpb``."""
    if key is None:
        query, key, value = query.unbind(3)
    grad_qkv, grad_rpb = _kernel().backward(
        grad_out, output, query, key, value, _rpb32(rpb), kernel_size, dilation, scale, want_rpb
    )
    return grad_qkv, grad_rpb.to(rpb.dtype) if want_rpb else grad_rpb


@_fused_attention_backward.register_fake
def _(grad_out, output, query, key, value, rpb, kernel_size, dilation, scale, want_rpb):
    return backward_fakes(grad_out, rpb, want_rpb)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "na2d's fused CPU kernel (backend 'fused') is differentiable once: a double backward is "
        "not supported. Use backend='reference' for higher-order gradients."
    )


_fused_attention_backward.register_autograd(_no_double_backward)


def _setup_context(ctx, inputs, output):
    query, key, value, rpb = inputs[:4]
    ctx.save_for_backward(output, query, key, value, rpb)
    ctx.packed, ctx.args = key is None, inputs[4:7]  # (kernel_size, dilation, scale)


def _backward(ctx, grad_out):
    output, query, key, value, rpb = ctx.saved_tensors
    want_rpb = rpb is not None and ctx.needs_input_grad[3]
    grad_qkv, grad_rpb = _fused_attention_backward(
        grad_out, output, query, key, value, rpb, *ctx.args, want_rpb
    )
    grads = (grad_qkv, None, None) if ctx.packed else grad_qkv.unbind(3)
    return (*grads, grad_rpb if want_rpb else None, None, None, None)


_fused_attention.register_autograd(_backward, setup_context=_setup_context)


def na2d_fused(
    query,
    key,
    value,
    kernel_size: int,
    dilation: int = 1,
    rpb=None,
    scale: float | None = None,
    qkv: torch.Tensor | None = None,
):
    """The fused backend: same arguments as :func:`nat_lightning.ops.na2d` (no weights); ``qkv``
    is the packed ``(B, H, W, 3, heads, D)`` tensor that query, key and value are views of, if
    they are (its gradient is then one packed tensor). Raises where it cannot serve the call."""
    check_na2d_args(query, key, value, kernel_size, dilation, rpb)
    reason = fused_unavailable(query)
    if reason is not None:
        raise ValueError(f"backend='fused' cannot serve this call: {reason}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    packed = (qkv, None, None) if qkv is not None else (query, key, value)
    return _fused_attention(*packed, rpb, kernel_size, dilation, float(scale))
