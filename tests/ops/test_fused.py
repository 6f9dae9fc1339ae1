"""The fused C++ CPU kernel (backend "fused") against the fp64 reference, and its fallback.

Every test that needs the compiled kernel builds it on first use (about 30 s, once per
machine: the torch extensions cache keeps it) and fails, not skips, where it cannot be built,
unless NAT_LIGHTNING_FUSED=0 turns it off on purpose.
"""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from nat_lightning.ops import build, na2d, na2d_qkv, na2d_reference, na2d_torch, select_backend
from nat_lightning.ops.fused import fused_unavailable, na2d_fused

pytestmark = pytest.mark.skipif(
    build.disabled_reason() is not None, reason="NAT_LIGHTNING_FUSED=0 turns the fused kernel off"
)

CASES = [  # (height, width, kernel_size, dilation, head_dim): odd and non-square maps
    (9, 11, 3, 1, 16),
    (13, 10, 5, 2, 32),
    (15, 22, 7, 1, 64),
    (29, 22, 7, 3, 16),
    (19, 17, 9, 1, 32),
    (23, 24, 11, 2, 16),
    (13, 14, 13, 1, 8),
    (17, 35, 3, 4, 24),  # a head_dim off the 8-channel blocks
    (7, 7, 7, 1, 5),  # every window is the whole map
    (19, 21, 17, 1, 8),  # a kernel past the unrolled sizes (3-13)
]


def _inputs(height, width, kernel_size, head_dim, batch=2, heads=2, dtype=torch.float32):
    q, k, v = (torch.randn(batch, height, width, heads, head_dim, dtype=dtype) for _ in range(3))
    return q, k, v, torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=dtype)


def _forward_and_grads(impl, inputs, *args, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = impl(*leaves[:3], *args, leaves[3], **kwargs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return [out, *torch.autograd.grad(out, leaves, weights)]


def _assert_close(got, expected, tol, relative_to_max=False):
    """Within ``tol``, absolute and relative; or (``relative_to_max``) within ``tol`` times each
    tensor's largest magnitude (the rpb gradient sums many cancelling terms)."""
    for name, a, b in zip(("out", "dq", "dk", "dv", "drpb"), got, expected):
        atol = tol * b.abs().max().item() if relative_to_max else tol
        torch.testing.assert_close(
            a.double(), b.double(), atol=atol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("height,width,kernel_size,dilation,head_dim", CASES)
def test_values_and_gradients_match_fp64_reference(height, width, kernel_size, dilation, head_dim):
    torch.manual_seed(0)
    inputs = _inputs(height, width, kernel_size, head_dim)
    got = _forward_and_grads(na2d_fused, inputs, kernel_size, dilation)
    expected = _forward_and_grads(
        na2d_reference, [t.double() for t in inputs], kernel_size, dilation
    )
    _assert_close(got, expected, 2e-5)


@pytest.mark.parametrize("height,width,kernel_size,dilation", [(12, 17, 5, 1), (14, 15, 3, 2)])
def test_packed_qkv_gradient_matches_reference(height, width, kernel_size, dilation):
    """na2d_qkv on the fused backend returns one packed gradient, equal to the reference's."""
    torch.manual_seed(0)
    qkv = torch.randn(2, height, width, 3, 2, 16)
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1)
    results = []
    for impl, dtype in ((na2d_qkv, torch.float32), (None, torch.float64)):
        x, r = qkv.to(dtype).requires_grad_(), rpb.to(dtype).requires_grad_()
        if impl is None:
            out = na2d_reference(*x.unbind(3), kernel_size, dilation, r)
        else:
            out = impl(x, kernel_size, dilation, r, backend="fused")
        results.append([out, *torch.autograd.grad(out.square().sum(), (x, r))])
    for a, b in zip(*results):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=2e-5)


def test_strided_inputs_match_reference():
    """Transposed maps and every-other-channel views: the kernel reads any strides."""
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(2, 16, 13, 2, 32).transpose(1, 2) for _ in range(3)
    )  # (2, 13, 16, 2, 32)
    inputs = [q[..., ::2], k[..., 1::2], v[..., ::2], torch.randn(2, 9, 9)]
    assert not inputs[0].is_contiguous()
    got = _forward_and_grads(na2d_fused, inputs, 5, 2)
    expected = _forward_and_grads(na2d_reference, [t.double() for t in inputs], 5, 2)
    _assert_close(got, expected, 2e-5)


def test_bitwise_deterministic_across_runs_and_thread_counts():
    torch.manual_seed(0)
    inputs = _inputs(21, 18, 7, 32, batch=3, heads=2)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            runs.append(_forward_and_grads(na2d_fused, inputs, 7, 2))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_its_tolerance_of_fp32(dtype):
    """bf16/fp16 in and out, fp32 inside: as close to the fp32 result as the rounding of the
    inputs and outputs allows."""
    torch.manual_seed(0)
    inputs = [t.to(dtype) for t in _inputs(14, 17, 7, 32)]
    got = _forward_and_grads(na2d_fused, inputs, 7, 1)
    expected = _forward_and_grads(na2d_fused, [t.float() for t in inputs], 7, 1)
    assert all(t.dtype == dtype for t in got)
    _assert_close(got, expected, 2e-2 if dtype == torch.bfloat16 else 4e-3, relative_to_max=True)


def test_auto_picks_the_fused_kernel_on_the_cpu():
    q = torch.randn(1, 9, 9, 2, 16)
    assert select_backend("auto", q, None) == "fused"
    assert select_backend("auto", q.bfloat16(), None) == "fused"
    assert select_backend("auto", q, None, return_weights=True) == "torch"  # it returns no weights
    assert select_backend("torch", q, None) == "torch"  # the way to turn it off per call
    with pytest.raises(ValueError, match="backend='fused' cannot serve this call: it serves"):
        na2d(q.double(), q.double(), q.double(), 3, backend="fused")


def test_auto_keeps_dense_attention_where_every_window_is_the_map():
    """A k x k map (per dilation group) is plain attention in the torch backend, faster there."""
    assert select_backend("auto", torch.zeros(1, 7, 7, 2, 8), None, kernel_size=7) == "torch"
    assert (
        select_backend("auto", torch.zeros(1, 14, 14, 2, 8), None, kernel_size=7, dilation=2)
        == "torch"
    )
    assert select_backend("auto", torch.zeros(1, 8, 7, 2, 8), None, kernel_size=7) == "fused"
    assert select_backend("fused", torch.zeros(1, 7, 7, 2, 8), None, kernel_size=7) == "fused"


def test_opaque_custom_ops_under_torch_compile():
    """The fake implementations agree with the kernel (opcheck), and a full-graph compile runs
    the op whole, forward and backward, with the eager result."""
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(10, 12, 5, 16)
    torch.library.opcheck(torch.ops.nat_lightning.na2d_fused.default, (q, k, v, rpb, 5, 1, 0.25))
    qkv = torch.stack((q, k, v), 3).requires_grad_()

    def step(x, r):
        return na2d_qkv(x, 5, 1, r, backend="fused").square().sum()

    r = rpb.clone().requires_grad_()
    expected = torch.autograd.grad(step(qkv, r), (qkv, r))
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(qkv, r), (qkv, r))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_double_backward_raises():
    q, k, v, rpb = (t.requires_grad_() for t in _inputs(9, 9, 3, 8))
    out = na2d_fused(q, k, v, 3, 1, rpb)
    (grad,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.sum().backward()


@pytest.fixture
def fresh_build(monkeypatch):
    """A build state of its own, so that a simulated failure leaves the real kernel loaded."""
    monkeypatch.setattr(build, "_state", {"tried": False, "module": None, "reason": None})


def test_failed_build_warns_once_and_the_torch_kernels_serve(fresh_build, monkeypatch):
    def fail(verbose):
        raise RuntimeError(
            "Error building extension 'nat_lightning_na2d_cpu': [1/2] c++ -O3 na2d_cpu.cpp\n"
            "na2d_cpu.cpp:1:1: error: simulated compiler error\nninja: build stopped: subcommand failed."
        )

    monkeypatch.setattr(build, "_build", fail)
    torch.manual_seed(0)
    q, k, v, rpb = _inputs(11, 9, 5, 16)
    with pytest.warns(
        UserWarning,
        match="unavailable \\(the build failed: RuntimeError: na2d_cpu.cpp:1:1: error: simulated compiler error\\)",
    ):
        out = na2d(q, k, v, 5, 1, rpb)
    torch.testing.assert_close(out, na2d_torch(q, k, v, 5, 1, rpb))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning, no second build
        assert select_backend("auto", q, None) == "torch"
    with pytest.raises(
        ValueError, match="backend='fused' cannot serve this call: the build failed"
    ):
        na2d(q, k, v, 5, backend="fused")


def test_missing_compiler_is_named(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-x")
    with pytest.warns(
        UserWarning, match="no C\\+\\+ compiler: 'no-such-compiler-x' is not on PATH"
    ):
        assert build.load() is None
    assert fused_unavailable(torch.zeros(1, 3, 3, 1, 4)).startswith("no C++ compiler")


def test_environment_switch_turns_it_off_without_a_warning(fresh_build, monkeypatch):
    monkeypatch.setenv(build.ENV, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.load() is None
        assert select_backend("auto", torch.zeros(1, 3, 3, 1, 4), None) == "torch"
    assert build.unavailable_reason() == "NAT_LIGHTNING_FUSED=0 turns it off"


def test_prebuild_command_reports_the_kernel():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "nat_lightning.ops.build"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "fused CPU kernel ready (" in result.stdout
