"""The row kernel (the torch backend's fast path) against the reference: values and gradients."""

import pytest
import torch

from nat_lightning.ops import na2d_qkv, na2d_reference, na2d_torch
from nat_lightning.ops import rows as rows_module
from nat_lightning.ops.rows import _key_row_grads, _row, _row_buffer, _strip_width, row_geometry
from nat_lightning.ops.tiled import strided_fits

SHAPES = [  # (height, width, kernel_size, dilation, tile_size or None for the default)
    (14, 14, 7, 1, None),  # border rows only: every query row has a clamped window
    (29, 20, 7, 1, 7),  # interior rows, and a last strip with a pad column
    (28, 28, 7, 1, None),  # two 14-wide strips, each off the map on one side
    (15, 20, 7, 1, 4),  # strips overlap their second neighbour (T < k - 1)
    (15, 20, 7, 1, 8),
    (9, 11, 5, 1, None),
    (8, 10, 3, 1, 4),
    (28, 28, 7, 2, None),  # dilation groups folded into the batch
    (16, 18, 3, 2, None),
]


def _inputs(height, width, kernel_size, dtype=torch.float64, batch=2, heads=3, head_dim=4):
    q, k, v = (torch.randn(batch, height, width, heads, head_dim, dtype=dtype) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=dtype)
    return q, k, v, rpb


def _forward_and_grads(impl, inputs, *args, **kwargs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = impl(*leaves[:3], *args, leaves[3], **kwargs)
    grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return [out, *torch.autograd.grad(out, leaves, grad)]


def test_shapes_take_the_row_kernel():
    """Every case above runs the row kernel, not the tiled fallback."""
    for h, w, k, d, t in SHAPES:
        geo = row_geometry(h // d, w // d, k, t or _strip_width(w // d, k), "cpu")
        assert geo is not None, (h, w, k, d, t)
    assert _strip_width(20) == 10 and row_geometry(29, 20, 7, 7, "cpu").strips * 7 == 21


@pytest.mark.parametrize("height,kernel_size", [(29, 7), (14, 7), (9, 3), (7, 7)])
def test_row_buffer_blocks_are_disjoint_and_key_rows_one_view(height, kernel_size):
    """Every query row's block is its own memory, and the strided view the backward takes for a
    key row equals the slices of that row in each of its readers, stacked."""
    geo = row_geometry(height, 16, kernel_size, 8, "cpu")
    buffer = _row_buffer(3, geo, torch.empty(0))
    for i in range(height):
        _row(buffer, i, geo).fill_(i)
    for i in range(height):
        assert (_row(buffer, i, geo) == i).all(), i
    buffer.copy_(torch.randn_like(buffer))
    r = geo.region
    q = torch.zeros(3, height, geo.tile, 2)
    for m in range(height):
        readers = range(geo.first_reader[m], geo.last_reader[m] + 1)
        assert all(geo.starts[j] <= m < geo.starts[j] + kernel_size for j in readers)
        slices = [_row(buffer, j, geo)[:, :, (m - geo.starts[j]) * r :][:, :, :r] for j in readers]
        grad_k = torch.empty(3, r, 2)
        _key_row_grads(m, geo, buffer, buffer, q + 1, q, grad_k, torch.empty(3, r, 2))
        expected = torch.cat(slices, 1).transpose(1, 2).sum(-1, keepdim=True).expand(3, r, 2)
        torch.testing.assert_close(grad_k, expected)


@pytest.mark.parametrize("height,width,kernel_size,dilation,tile_size", SHAPES)
def test_forward_and_gradients_match_reference(height, width, kernel_size, dilation, tile_size):
    torch.manual_seed(0)
    inputs = _inputs(height, width, kernel_size)
    got = _forward_and_grads(na2d_torch, inputs, kernel_size, dilation, tile_size=tile_size)
    expected = _forward_and_grads(na2d_reference, inputs, kernel_size, dilation)
    for name, a, b in zip(("out", "dq", "dk", "dv", "drpb"), got, expected):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("height,width,kernel_size,dilation,tile_size", SHAPES[1:3] + SHAPES[-2:])
def test_packed_qkv_gradient_matches_reference(height, width, kernel_size, dilation, tile_size):
    """na2d_qkv hands the row kernel the fused projection's output; its one packed gradient
    equals the reference's three, stacked (as autograd's unbind-backward would)."""
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(height, width, kernel_size)
    qkv = torch.stack([q, k, v], 3).requires_grad_()
    rpb.requires_grad_()
    out = na2d_torch(*qkv.unbind(3), kernel_size, dilation, rpb, tile_size=tile_size, qkv=qkv)
    grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    got = torch.autograd.grad(out, (qkv, rpb), grad)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    ref = na2d_reference(*leaves[:3], kernel_size, dilation, leaves[3])
    expected = torch.autograd.grad(ref, leaves, grad)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(got[0], torch.stack(expected[:3], 3))
    torch.testing.assert_close(got[1], expected[3])
    for backend in ("torch", "reference"):  # the public entry point, both ways
        torch.testing.assert_close(na2d_qkv(qkv, kernel_size, dilation, rpb, backend=backend), ref)


def test_na2d_qkv_rejects_unpacked_input():
    with pytest.raises(
        ValueError,
        match=r"qkv must be \(batch, height, width, 3, heads, head_dim\), got qkv.shape=\(2, 9, 9, 12\)",
    ):
        na2d_qkv(torch.zeros(2, 9, 9, 12), 3)


@pytest.mark.parametrize("height,width,kernel_size,dilation,tile_size", SHAPES[:3] + SHAPES[-1:])
def test_inference_path_matches_reference_without_rpb(
    height, width, kernel_size, dilation, tile_size
):
    """No gradient needed: the forward reuses one row buffer instead of keeping the softmax."""
    torch.manual_seed(0)
    q, k, v, _ = _inputs(height, width, kernel_size)
    with torch.no_grad():
        got = na2d_torch(q, k, v, kernel_size, dilation, tile_size=tile_size)
    torch.testing.assert_close(got, na2d_reference(q, k, v, kernel_size, dilation))


@pytest.mark.parametrize("dilation", [1, 2])
def test_whole_map_windows_take_dense_attention(dilation, monkeypatch):
    """A k x k map (per dilation group) is plain attention; the row loop must not run."""
    torch.manual_seed(0)
    inputs = _inputs(7 * dilation, 7 * dilation, 7)
    monkeypatch.setattr(rows_module, "_row_forward", None)  # would raise if called
    got = _forward_and_grads(na2d_torch, inputs, 7, dilation)
    expected = _forward_and_grads(na2d_reference, inputs, 7, dilation)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_gradcheck_fp64():
    torch.manual_seed(0)
    inputs = [t.requires_grad_() for t in _inputs(9, 10, 3, batch=1, heads=2, head_dim=2)]

    def fn(q, k, v, rpb):
        return na2d_torch(q, k, v, 3, 1, rpb, tile_size=4)

    assert torch.autograd.gradcheck(fn, inputs)


def test_bf16_close_to_fp64():
    torch.manual_seed(0)
    inputs = _inputs(21, 21, 7)
    expected = _forward_and_grads(na2d_reference, inputs, 7, 1)
    got = _forward_and_grads(na2d_torch, [t.bfloat16() for t in inputs], 7, 1)
    assert got[0].dtype == torch.bfloat16 and got[4].dtype == torch.bfloat16
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b, atol=6e-2, rtol=6e-2)


def test_falls_back_to_tiled_where_rows_cannot_serve():
    """Dilation that does not divide the map, and attention weights, go to the tiled kernel."""
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(13, 11, 5)
    torch.testing.assert_close(na2d_torch(q, k, v, 5, 2, rpb), na2d_reference(q, k, v, 5, 2, rpb))
    out, weights = na2d_torch(q, k, v, 5, 1, rpb, return_weights=True)
    ref_out, ref_weights = na2d_reference(q, k, v, 5, 1, rpb, return_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)


@pytest.mark.parametrize("grad", [False, True])
def test_inputs_are_left_untouched(grad):
    """With one image and one strip the query rows can be a view of the input; the scale must
    still not be applied to the caller's tensor."""
    torch.manual_seed(0)
    inputs = [t.requires_grad_(grad) for t in _inputs(8, 8, 7, batch=1, heads=1)]
    before = [t.detach().clone() for t in inputs]
    out = na2d_torch(*inputs[:3], 7, 1, inputs[3])
    if grad:
        out.sum().backward()
    for t, b in zip(inputs, before):
        assert torch.equal(t.detach(), b)
    torch.testing.assert_close(out, na2d_reference(*inputs[:3], 7, 1, inputs[3]))


@pytest.mark.parametrize("width", [9, 43, 50, 51, 57])
def test_widths_no_measured_strip_tiles_take_the_row_kernel(width, monkeypatch):
    """Maps 9, 43, 50, 51 and 57 wide (144, 200 and 228 px inputs) fit none of the 6, 7, 8 and
    14-wide strips; _strip_width picks one that fits, and the row kernel (not the tiled
    fallback) serves them, exactly."""
    assert strided_fits(width, 7, _strip_width(width, 7))
    monkeypatch.setattr(rows_module, "na2d_tiled", None)  # would raise if the fallback were taken
    torch.manual_seed(0)
    inputs = _inputs(9, width, 7, batch=1, heads=2, head_dim=4)
    got = _forward_and_grads(na2d_torch, inputs, 7, 1)
    expected = _forward_and_grads(na2d_reference, inputs, 7, 1)
    for name, a, b in zip(("out", "dq", "dk", "dv", "drpb"), got, expected):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("packed", [False, True])
def test_double_backward_raises(packed):
    """The backward is not itself differentiable: differentiating through it must fail loudly,
    not return gradients that miss the second-order terms."""
    torch.manual_seed(0)
    q, k, v, rpb = (t.requires_grad_() for t in _inputs(9, 10, 3))
    if packed:
        qkv = torch.stack([q, k, v], 3).detach().requires_grad_()
        out, leaves = na2d_qkv(qkv, 3, 1, rpb), (qkv, rpb)
    else:
        out, leaves = na2d_torch(q, k, v, 3, 1, rpb), (q, k, v, rpb)
    grads = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once: a double backward"):
        sum(g.square().sum() for g in grads).backward()


def test_custom_op_registrations_agree():
    """torch.library.opcheck: schema, fake (meta) shapes and strides, autograd registration and
    AOT dispatch (dynamic shapes included) against the real kernel, packed and unpacked, with and
    without rpb, training and inference."""
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(9, 10, 3, dtype=torch.float32)
    qkv = torch.stack([q, k, v], 3)
    for args in ((q, k, v, rpb), (qkv, None, None, rpb), (q, k, v, None)):
        for keep in (True, False):
            grad = keep and args[1] is None
            inputs = [t.clone().requires_grad_(grad) if t is not None else None for t in args]
            torch.library.opcheck(rows_module._row_attention, (*inputs, 3, 0.5, 4, keep))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_op_matches_reference(dtype, monkeypatch):
    """Under torch.compile na2d_qkv is one graph (fullgraph: no break) around the row kernel's
    op, bf16 included, forward and backward, rpb and dilation, with a dynamic batch; and
    inference (no_grad)."""
    monkeypatch.setattr(rows_module, "na2d_tiled", None)  # would raise if the fallback were taken
    torch.manual_seed(0)

    def attend(qkv, rpb):
        return na2d_qkv(qkv, 5, 2, rpb, backend="torch")

    compiled = torch.compile(attend, fullgraph=True, dynamic=True)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 6e-2, "rtol": 6e-2}
    for batch in (2, 3):
        q, k, v, rpb = _inputs(18, 20, 5, batch=batch)
        qkv = torch.stack([q, k, v], 3).to(dtype).requires_grad_()
        rpb = rpb.to(dtype).requires_grad_()
        out = compiled(qkv, rpb)
        grad = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
        got = torch.autograd.grad(out, (qkv, rpb), grad.to(dtype))
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v, rpb)]
        ref = na2d_reference(*leaves[:3], 5, 2, leaves[3])
        expected = torch.autograd.grad(ref, leaves, grad)
        assert out.dtype == got[0].dtype == got[1].dtype == dtype
        torch.testing.assert_close(out.double(), ref, **tol)
        torch.testing.assert_close(got[0].double(), torch.stack(expected[:3], 3), **tol)
        torch.testing.assert_close(got[1].double(), expected[3], **tol)
        with torch.no_grad():
            torch.testing.assert_close(compiled(qkv, rpb).double(), ref, **tol)
