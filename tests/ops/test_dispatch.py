"""na2d's backend choice and its errors for bad input."""

import importlib.util

import pytest
import torch

from nat_lightning.ops import na2d, na2d_reference, select_backend
from nat_lightning.ops.fused import fused_unavailable

HAS_NATTEN = importlib.util.find_spec("natten") is not None


def _qkv(*shape, dtype=torch.float32):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_backends_agree_on_cpu(backend):
    torch.manual_seed(0)
    q, k, v = _qkv(2, 9, 10, 2, 8, dtype=torch.float64)
    rpb = torch.randn(2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(
        na2d(q, k, v, 3, 2, rpb, backend=backend), na2d_reference(q, k, v, 3, 2, rpb)
    )


def test_auto_never_picks_natten_on_cpu():
    """On the CPU auto takes the fused kernel where it is built, else the torch kernels; fp64
    always the torch kernels (the fused kernel computes in fp32)."""
    q = torch.randn(1, 8, 8, 2, 8)
    expected = "torch" if fused_unavailable(q) else "fused"
    assert select_backend("auto", q, None) == expected
    with torch.no_grad():
        assert select_backend("auto", q, None) == expected
    assert select_backend("auto", q.double(), None) == "torch"


@pytest.mark.skipif(not HAS_NATTEN, reason="natten not installed")
def test_natten_backend_refuses_what_it_cannot_run():
    q = torch.randn(1, 8, 8, 2, 8)
    with pytest.raises(ValueError, match="relative positional bias"):
        na2d(q, q, q, 3, rpb=torch.zeros(2, 5, 5), backend="natten")
    with pytest.raises(ValueError, match="backward"):
        na2d(q.requires_grad_(), q, q, 3, backend="natten")
    with pytest.raises(ValueError, match="attention weights"):
        with torch.no_grad():
            na2d(q, q, q, 3, backend="natten", return_weights=True)


@pytest.mark.skipif(not HAS_NATTEN, reason="natten not installed")
def test_natten_backend_serves_cpu_inference_without_rpb():
    torch.manual_seed(0)
    q, k, v = _qkv(1, 11, 12, 2, 16)
    with torch.no_grad():
        got = na2d(q, k, v, 5, 2, backend="natten")
    torch.testing.assert_close(got, na2d_reference(q, k, v, 5, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=4), "kernel_size must be an odd integer >= 3, got kernel_size=4"),
        (dict(kernel_size=1), "kernel_size=1"),
        (dict(kernel_size=5, dilation=2), "kernel_size \\* dilation must not exceed"),
        (dict(kernel_size=3, dilation=0), "dilation=0"),
        (
            dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)),
            "rpb must have shape .* got rpb.shape=\\(2, 3, 3\\)",
        ),
        (dict(kernel_size=3, backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, match):
    q = torch.randn(1, 8, 9, 2, 4)
    with pytest.raises(ValueError, match=match):
        na2d(q, q, q, **kwargs)


def test_bad_tensors_name_the_field():
    q = torch.randn(1, 8, 8, 2, 4)
    with pytest.raises(ValueError, match="query must have rank 5"):
        na2d(q[0], q[0], q[0], 3)
    with pytest.raises(ValueError, match="same shape"):
        na2d(q, q[:, :7], q, 3)
    with pytest.raises(ValueError, match="share a dtype"):
        na2d(q, q.double(), q, 3)
    with pytest.raises(ValueError, match="floating-point"):
        na2d(q.long(), q.long(), q.long(), 3)


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_reference():
    torch.manual_seed(0)
    q, k, v = (t.cuda() for t in _qkv(2, 20, 17, 2, 32))
    rpb = torch.randn(2, 13, 13, device="cuda")
    torch.testing.assert_close(
        na2d(q, k, v, 7, 2, rpb, backend="torch"),
        na2d_reference(q, k, v, 7, 2, rpb),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_NATTEN, reason="natten not installed")
def test_natten_on_cuda_matches_torch_backend():
    torch.manual_seed(0)
    q, k, v = (t.cuda().requires_grad_() for t in _qkv(2, 20, 17, 2, 32))
    assert select_backend("auto", q, None) == "natten"
    torch.testing.assert_close(
        na2d(q, k, v, 7, 2, backend="natten"),
        na2d(q, k, v, 7, 2, backend="torch"),
        atol=1e-3,
        rtol=1e-3,
    )


def test_flex_backend_matches_reference_on_cpu_forward():
    torch.manual_seed(0)
    q, k, v = _qkv(2, 13, 10, 2, 16)
    rpb = torch.randn(2, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(
            na2d(q, k, v, 5, 2, rpb, backend="flex"),
            na2d_reference(q, k, v, 5, 2, rpb),
            atol=1e-5,
            rtol=1e-5,
        )
    with pytest.raises(ValueError, match="no backward on the CPU"):
        na2d(q.requires_grad_(), k, v, 5, 2, rpb, backend="flex")


@pytest.mark.gpu
def test_flex_on_cuda_matches_torch_backend_with_gradients():
    torch.manual_seed(0)
    q, k, v = (t.cuda().requires_grad_() for t in _qkv(2, 20, 17, 2, 32))
    rpb = torch.randn(2, 13, 13, device="cuda", requires_grad=True)
    grads = []
    for backend in ("flex", "torch"):
        out = na2d(q, k, v, 7, 2, rpb, backend=backend)
        grads.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v, rpb))])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
