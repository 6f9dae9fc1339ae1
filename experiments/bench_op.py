"""Neighborhood attention op on CPU: the fused C++ kernel and the torch backend against a naive
gather, and memory against full self-attention.

    python experiments/bench_op.py            # full run (~5 min on 2 cores), writes op_*.png
    python experiments/bench_op.py --quick    # fewer repeats
    python experiments/bench_op.py --fused    # only the fused-vs-torch ratios (~1 min)

Fused vs torch: at NAT-Mini's stage 1-3 shapes (batch 16, k=7, rpb, packed qkv as the model
calls it), forward (no_grad) and forward+backward, the two backends alternating call by call in
one process, medians; effective GFLOP/s (forward 4*B*heads*H*W*k^2*D, forward+backward three
times that) against the machine's measured fp32 matmul GFLOP/s (a 2048^3 torch.mm, all threads).

Time: forward+backward with rpb, median of repeats after one warm-up, same process, same inputs.
"Naive gather" is nat_lightning.ops.na2d_reference: it gathers each query's k*k keys and values
into a (B, H, W, k, k, heads, D) tensor and runs einsums; its backward scatters them back.
"torch backend" is what ``backend="torch"`` runs: the row kernel, ops/rows.py. "fused" is
``backend="fused"`` (``auto`` on the CPU where it is built): ops/csrc, ops/fused.py. "tiled" is the previous kernel, ops/tiled.py, still the fallback for attention
weights and dilations that do not divide the map.
Memory: peak resident memory growth during one forward+backward, each case in a fresh
subprocess (VmHWM reset through /proc/self/clear_refs), inputs excluded.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nat_lightning.ops import na2d_fused, na2d_qkv, na2d_reference, na2d_tiled, na2d_torch

HERE = Path(__file__).resolve().parent
SHAPES = {  # name: (batch, side, heads, head_dim), kernel 7, as in NAT-Mini at 224 px
    "NAT-Mini stage 1": (8, 56, 2, 32),
    "NAT-Mini stage 3": (8, 14, 8, 32),
}


def full_attention(q, k, v, kernel_size, dilation, rpb):
    """Global self-attention over all tokens (what NA replaces), explicit N x N scores."""
    b, h, w, heads, d = q.shape
    q, k, v = (t.reshape(b, h * w, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = (q * d**-0.5) @ k.transpose(-1, -2)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, h, w, heads, d)


IMPLS = {
    "naive gather": na2d_reference,
    "torch backend": na2d_torch,
    "fused": na2d_fused,
    "tiled": na2d_tiled,
    "full self-attention": full_attention,
}
STAGES = {  # name: (batch, side, heads, head_dim), k=7: NAT-Mini at 224 px, batch 16
    "stage 1": (16, 56, 2, 32),
    "stage 2": (16, 28, 4, 32),
    "stage 3": (16, 14, 8, 32),
}


def inputs(batch, side, heads, dim, dtype, kernel_size=7):
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, side, side, heads, dim, generator=g).to(dtype).requires_grad_()
        for _ in range(3)
    )
    rpb = (
        torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=g)
        .to(dtype)
        .requires_grad_()
    )
    return q, k, v, rpb


def step(impl, q, k, v, rpb):
    out = impl(q, k, v, 7, 1, rpb)
    out.backward(torch.ones_like(out))
    for t in (q, k, v, rpb):
        t.grad = None


def median_seconds(impl, args, repeats):
    step(impl, *args)  # warm-up: caches, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(impl, *args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_medians(calls: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument call, the calls alternating within every round."""
    for call in calls.values():
        call()  # warm-up (and the fused kernel's build or load)
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = alternating_medians({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * n**3 / seconds / 1e9


def fused_vs_torch(repeats: int, batch_size: int = 16) -> None:
    """The fused kernel's speed-up over the torch backend at NAT-Mini's stage shapes."""
    peak = matmul_gflops()
    print(
        f"\n### Fused kernel vs torch backend (k=7, rpb, packed qkv), alternating, median of {repeats}\n"
    )
    print(f"Measured fp32 matmul (2048^3 torch.mm): {peak:.0f} GFLOP/s.\n")
    print(
        "| stage (B, side, heads, D) | dtype | pass | torch ms | fused ms | speed-up | fused GFLOP/s | of matmul |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    speedups: dict[str, list[float]] = {}
    for name, (_, side, heads, dim) in STAGES.items():
        batch = batch_size
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            qkv = torch.randn(batch, side, side, 3, heads, dim, generator=g).to(dtype)
            rpb = torch.randn(heads, 13, 13, generator=g).to(dtype)
            flops = 4 * batch * heads * side * side * 49 * dim
            for pass_, factor in (("fwd", 1), ("fwd+bwd", 3)):
                calls = {b: _op_call(qkv, rpb, b, pass_ == "fwd+bwd") for b in ("torch", "fused")}
                med = alternating_medians(calls, repeats)
                gflops = factor * flops / med["fused"] / 1e9
                speedups.setdefault(f"{pass_}, {str(dtype)[6:]}", []).append(
                    med["torch"] / med["fused"]
                )
                print(
                    f"| {name} {(batch, side, heads, dim)} | {str(dtype)[6:]} | {pass_} | {med['torch'] * 1e3:.1f} "
                    f"| {med['fused'] * 1e3:.1f} | {med['torch'] / med['fused']:.2f}x | {gflops:.0f} "
                    f"| {gflops / peak:.0%} |",
                    flush=True,
                )
    plot_fused(speedups, batch_size)


def plot_fused(speedups: dict[str, list[float]], batch: int) -> None:
    """op_fused.png: the fused kernel's speed-up over the torch backend per stage and pass."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(speedups)
    for i, (label, values) in enumerate(speedups.items()):
        ax.bar([s + i * width for s in range(len(STAGES))], values, width, label=label)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(len(STAGES))], list(STAGES))
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_ylim(0, 1.4 * max(max(v) for v in speedups.values()))  # room for the legend
    ax.set(
        ylabel="speed-up over torch backend",
        title=f"fused CPU kernel, k=7, batch {batch}, {torch.get_num_threads()} threads",
    )
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(HERE / "op_fused.png", dpi=110)
    print("wrote experiments/op_fused.png")


def _op_call(qkv, rpb, backend: str, backward: bool):
    """na2d_qkv as the NAT layers call it, inference (no_grad) or forward+backward."""
    if not backward:

        def call():
            with torch.no_grad():
                na2d_qkv(qkv, 7, 1, rpb, backend=backend)

        return call
    x, r = qkv.clone().requires_grad_(), rpb.clone().requires_grad_()

    def call():
        out = na2d_qkv(x, 7, 1, r, backend=backend)
        out.backward(torch.ones_like(out))
        x.grad = r.grad = None

    return call


def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_memory_child(impl_name, side, batch, heads, dim):
    """Runs in a subprocess: peak RSS growth (MiB) of one forward+backward."""
    args = inputs(batch, side, heads, dim, torch.float32)
    step(
        IMPLS[impl_name],
        *inputs(batch, 8 if impl_name != "naive gather" else 8, heads, dim, torch.float32),
    )
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    step(IMPLS[impl_name], *args)
    return (_rss_kib("VmHWM") - base) / 1024


def peak_memory(impl_name, side, batch=1, heads=2, dim=32):
    code = (
        "import sys, json; sys.path.insert(0, %r); import bench_op as b; "
        "print(json.dumps(b.peak_memory_child(%r, %d, %d, %d, %d)))"
        % (str(HERE), impl_name, side, batch, heads, dim)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--fused", action="store_true", help="only the fused-vs-torch table")
    parser.add_argument("--batch", type=int, default=16, help="batch of the fused-vs-torch table")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    fused_vs_torch(repeats + 4, args.batch)
    if args.fused:
        return
    print("\n### Forward+backward with rpb, k=7: median ms, speed-up = naive / torch backend\n")
    print("| shape | dtype | naive gather ms | tiled ms | torch backend ms | speed-up | fused ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            data = inputs(*shape, dtype)
            naive = median_seconds(na2d_reference, data, repeats)
            tiled = median_seconds(na2d_tiled, data, repeats)
            fast = median_seconds(na2d_torch, data, repeats)
            fused = median_seconds(na2d_fused, data, repeats)
            print(
                f"| {name} {shape} | {str(dtype)[6:]} | {naive * 1e3:.0f} | {tiled * 1e3:.1f} | {fast * 1e3:.1f} "
                f"| {naive / fast:.1f}x | {fused * 1e3:.1f} |"
            )

    sides = [14, 28, 56, 112, 224]
    full_max = 112  # full self-attention at 224^2 would need ~40 GB of scores
    print("\n### Peak memory of one forward+backward (B=1, 2 heads x 32, k=7, fp32), MiB\n")
    print("| tokens | " + " | ".join(IMPLS) + " |")
    print("|---:|" + "---:|" * len(IMPLS))
    memory = {n: [] for n in IMPLS}
    for side in sides:
        for n in IMPLS:
            memory[n].append(
                peak_memory(n, side)
                if n != "full self-attention" or side <= full_max
                else float("nan")
            )
        print(f"| {side * side} | " + " | ".join(f"{memory[n][-1]:.1f}" for n in IMPLS) + " |")
    for n in IMPLS:
        i = sides.index(full_max) if n == "full self-attention" else len(sides) - 1
        print(
            f"- {n}: memory for 4x tokens ({sides[i]}^2 vs {sides[i - 1]}^2): {memory[n][i] / memory[n][i - 1]:.2f}x"
        )

    print("\n### Time of one forward+backward against tokens (B=1, 2 heads x 32, k=7, fp32), ms\n")
    timing = {n: [] for n in IMPLS}
    print("| tokens | " + " | ".join(IMPLS) + " |")
    print("|---:|" + "---:|" * len(IMPLS))
    for side in sides:
        data = inputs(1, side, 2, 32, torch.float32)
        for n, impl in IMPLS.items():
            skip = n == "full self-attention" and side > full_max
            timing[n].append(
                float("nan") if skip else median_seconds(impl, data, max(3, repeats // 2)) * 1e3
            )
        print(f"| {side * side} | " + " | ".join(f"{timing[n][-1]:.1f}" for n in IMPLS) + " |")
    plot(sides, memory, timing)


def plot(sides, memory, timing):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots)")
        return
    tokens = [s * s for s in sides]
    for data, label, fname in (
        (memory, "peak memory (MiB)", "op_memory.png"),
        (timing, "fwd+bwd time (ms)", "op_time.png"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for n, ys in data.items():
            ax.plot(tokens, ys, marker="o", label=n)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="tokens (H x W)",
            ylabel=label,
            title="2-D attention, k=7, CPU",
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(HERE / fname, dpi=110)
        print(f"wrote experiments/{fname}")


if __name__ == "__main__":
    main()
