"""The reference op against a per-query loop over NATTEN 0.17's own window formulas."""

import importlib.util

import pytest
import torch

from nat_lightning.ops import na2d_reference


def natten_window_start(index, length, kernel_size, dilation):
    # get_window_start from NATTEN 0.17's CPU kernels, transcribed literally
    ns = kernel_size // 2
    if dilation <= 1:
        return max(index - ns, 0) + (index + ns >= length) * (length - index - ns - 1)
    if index - ns * dilation < 0:
        return index % dilation
    if index + ns * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * ns * dilation
        return a + imodd - kernel_size * dilation
    return index - ns * dilation


def natten_pb_start(index, length, kernel_size, dilation):
    # get_pb_start from NATTEN 0.17's CPU kernels, transcribed literally
    ns = kernel_size // 2
    if dilation <= 1:
        return ns + (index < ns) * (ns - index) + (index + ns >= length) * (length - index - 1 - ns)
    if index - ns * dilation < 0:
        return kernel_size - 1 - (index // dilation)
    if index + ns * dilation >= length:
        return (length - index - 1) // dilation
    return ns


def loop_na2d(q, k, v, kernel_size, dilation, rpb, scale):
    b, h, w, heads, _ = q.shape
    out = torch.zeros_like(q)
    for i in range(h):
        si, pi = (
            natten_window_start(i, h, kernel_size, dilation),
            natten_pb_start(i, h, kernel_size, dilation),
        )
        for j in range(w):
            sj, pj = (
                natten_window_start(j, w, kernel_size, dilation),
                natten_pb_start(j, w, kernel_size, dilation),
            )
            rows = [si + a * dilation for a in range(kernel_size)]
            cols = [sj + c * dilation for c in range(kernel_size)]
            keys = k[:, rows][:, :, cols]  # (B, k, k, heads, D)
            vals = v[:, rows][:, :, cols]
            logits = torch.einsum("bhd,bxyhd->bhxy", q[:, i, j] * scale, keys)
            if rpb is not None:
                logits = logits + rpb[:, pi : pi + kernel_size, pj : pj + kernel_size]
            p = logits.flatten(-2).softmax(-1).view_as(logits)
            out[:, i, j] = torch.einsum("bhxy,bxyhd->bhd", p, vals)
    return out


@pytest.mark.parametrize(
    "height,width,kernel_size,dilation",
    [(7, 9, 3, 1), (9, 7, 5, 1), (11, 10, 3, 2), (13, 9, 3, 3), (10, 15, 5, 2), (7, 7, 7, 1)],
)
def test_reference_matches_natten_loop(height, width, kernel_size, dilation):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, height, width, 2, 4, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=torch.float64)
    expected = loop_na2d(q, k, v, kernel_size, dilation, rpb, 0.3)
    torch.testing.assert_close(na2d_reference(q, k, v, kernel_size, dilation, rpb, 0.3), expected)


def test_reference_weights_sum_to_one_over_the_window():
    q, k, v = (torch.randn(1, 9, 8, 2, 4, dtype=torch.float64) for _ in range(3))
    _, weights = na2d_reference(q, k, v, 5, 1, return_weights=True)
    assert weights.shape == (1, 2, 9, 8, 25)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 9, 8, dtype=torch.float64))


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = (torch.randn(1, 6, 6, 1, 16, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(na2d_reference(q, k, v, 3), na2d_reference(q, k, v, 3, scale=0.25))


@pytest.mark.skipif(importlib.util.find_spec("natten") is None, reason="natten not installed")
@pytest.mark.parametrize("dilation", [1, 2])
def test_reference_matches_natten_forward(dilation):
    import natten

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 11, 9, 2, 16) for _ in range(3))
    with torch.no_grad():
        expected = natten.na2d(q, k, v, kernel_size=3, dilation=dilation)
    torch.testing.assert_close(na2d_reference(q, k, v, 3, dilation), expected, atol=1e-5, rtol=1e-5)
