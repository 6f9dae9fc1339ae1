"""The tiled torch kernel against the reference: values, weights, gradients, dtypes."""

import pytest
import torch

from nat_lightning.ops import na2d_reference, na2d_tiled
from nat_lightning.ops.tiled import strided_tiles

SHAPES = [  # (height, width, kernel_size, dilation, tile_size)
    (7, 9, 3, 1, 8),
    (13, 11, 5, 2, 4),
    (17, 23, 3, 3, 3),
    (20, 15, 5, 3, 2),
    (7, 7, 7, 1, 8),
    (15, 14, 7, 2, 1),
    (28, 28, 7, 4, 7),
    (31, 29, 7, 1, 6),
    (56, 57, 7, 1, 7),  # strided rows, indexed columns
]


def _inputs(height, width, kernel_size, dtype=torch.float64, batch=2, heads=3, head_dim=4):
    q, k, v = (torch.randn(batch, height, width, heads, head_dim, dtype=dtype) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=dtype)
    return q, k, v, rpb


def test_shapes_cover_both_tilings():
    """SHAPES must exercise the strided (unfold) path and the indexed (gather) path."""
    kinds = {
        strided_tiles(h // d if h % d == 0 and w % d == 0 else h, k, t, "cpu") is not None
        for h, w, k, d, t in SHAPES
        if d == 1 or (h % d == 0 and w % d == 0)
    }
    assert kinds == {True, False}
    assert strided_tiles(57, 7, 8, "cpu") is None  # a last tile of one query misses its window


@pytest.mark.parametrize("height,width,kernel_size,dilation,tile_size", SHAPES)
def test_forward_and_weights_match_reference(height, width, kernel_size, dilation, tile_size):
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(height, width, kernel_size)
    out, weights = na2d_tiled(
        q, k, v, kernel_size, dilation, rpb, return_weights=True, tile_size=tile_size
    )
    ref_out, ref_weights = na2d_reference(q, k, v, kernel_size, dilation, rpb, return_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(
        na2d_tiled(q, k, v, kernel_size, dilation, tile_size=tile_size),
        na2d_reference(q, k, v, kernel_size, dilation),
    )


@pytest.mark.parametrize("dilation,rpb", [(1, True), (2, True), (3, False)])
def test_gradcheck_fp64(dilation, rpb):
    torch.manual_seed(0)
    # 9 x 10 with tiles of 4: a short last tile each way; 9 rows are the least dilation 3 takes
    q, k, v, bias = _inputs(9, 10, 3, batch=1, heads=2, head_dim=2)
    args = [t.requires_grad_() for t in (q, k, v, bias)]

    def fn(q, k, v, bias):
        return na2d_tiled(q, k, v, 3, dilation, bias if rpb else None, tile_size=4)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 3e-2)]
)
def test_gradients_match_reference(dtype, tol):
    torch.manual_seed(0)
    inputs = _inputs(13, 11, 5, dtype=torch.float64)
    grads = []
    for impl in (na2d_reference, na2d_tiled):
        leaves = [t.to(dtype).requires_grad_() for t in inputs]
        out = impl(*leaves[:3], 5, 2, leaves[3])
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out).to(dtype))
        grads.append([out.double()] + [t.grad.double() for t in leaves])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, atol=tol * 10, rtol=tol)


def test_bf16_forward_close_to_fp64():
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(14, 14, 7)
    expected = na2d_reference(q, k, v, 7, 1, rpb)
    got = na2d_tiled(*(t.bfloat16() for t in (q, k, v)), 7, 1)
    assert got.dtype == torch.bfloat16
    got_rpb = na2d_tiled(*(t.bfloat16() for t in (q, k, v)), 7, 1, rpb.bfloat16())
    torch.testing.assert_close(got_rpb.double(), expected, atol=5e-2, rtol=5e-2)
    assert torch.isfinite(got).all()


def test_rpb_gradient_is_batch_sum():
    """rpb is shared by the batch: its gradient for a batch equals the sum over single items."""
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(9, 9, 3, batch=3)
    rpb.requires_grad_()
    na2d_tiled(q, k, v, 3, 1, rpb).sum().backward()
    total = rpb.grad.clone()
    rpb.grad = None
    for i in range(3):
        na2d_tiled(q[i : i + 1], k[i : i + 1], v[i : i + 1], 3, 1, rpb).sum().backward()
    torch.testing.assert_close(rpb.grad, total)
