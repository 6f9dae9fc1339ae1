"""UPerNet + NAT-Mini segmentation on the CPU: training images/s and peak memory at 512x512
crops, and time against tokens (neighbourhood attention linear, full attention quadratic).

    python experiments/bench_seg.py                       # both parts, ~10 min on 2 cores
    python experiments/bench_seg.py --part train --steps 3
    python experiments/bench_seg.py --part tokens --sides 32,64,96,128

Part ``train``: the ADE20K recipe's network (configs/ade20k_upernet_nat_mini.yaml: NAT-Mini,
decode head 512 channels, auxiliary head 256, 150 classes), fp32, AdamW, 512x512 random
images and labels, a plain PyTorch loop; median seconds per step after one warm-up step, for
each attention backend; peak memory is the process's maximum resident set size (each
measurement runs in its own subprocess, so it starts from the same state).

Part ``tokens``: one stage-1 attention layer's op (NAT-Mini: 2 heads of 32, kernel 7, rpb)
against full self-attention (torch's scaled_dot_product_attention, the same heads) on square
maps of ``side``^2 tokens, forward + backward, fp32; and the whole NAT-Mini backbone's forward at
4 x side pixels. Prints the time per token: flat for a linear cost, growing for a quadratic one.
Plot: experiments/seg_tokens.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train_worker(backend: str, batch: int, steps: int) -> dict:
    import torch

    from nat_lightning import NatForSemanticSegmentation, UperNetConfig

    torch.manual_seed(0)
    config = UperNetConfig.from_variant(
        "nat_mini", num_labels=150, backbone_overrides={"attention_backend": backend}
    )
    network = NatForSemanticSegmentation(config).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=6e-5)
    images = torch.randn(batch, 3, 512, 512)
    labels = torch.randint(0, 150, (batch, 512, 512))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        network(images, labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "backend": backend,
        "batch": batch,
        "s_per_step": seconds,
        "img_per_s": batch / seconds,
        "peak_rss_gib": peak,
    }


def tokens_worker(sides: list[int], repeats: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from nat_lightning import NatBackbone, NatConfig
    from nat_lightning.ops import na2d

    torch.manual_seed(0)
    heads, dim, kernel = 2, 32, 7
    rpb = torch.zeros(heads, 2 * kernel - 1, 2 * kernel - 1, requires_grad=True)
    backbone = NatBackbone(NatConfig.from_variant("nat_mini")).eval()
    rows = []
    for side in sides:
        q, k, v = (torch.randn(1, side, side, heads, dim, requires_grad=True) for _ in range(3))
        flat = [
            t.detach().reshape(1, side * side, heads, dim).transpose(1, 2).requires_grad_()
            for t in (q, k, v)
        ]

        def neighbourhood(q=q, k=k, v=v):
            na2d(q, k, v, kernel, 1, rpb).sum().backward()

        def full(flat=flat):
            F.scaled_dot_product_attention(*flat).sum().backward()

        def whole_backbone(side=side):
            with torch.no_grad():
                backbone(torch.randn(1, 3, 4 * side, 4 * side))

        row = {"side": side, "tokens": side * side}
        for name, fn in (
            ("na_ms", neighbourhood),
            ("full_ms", full),
            ("backbone_ms", whole_backbone),
        ):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            row[name] = 1e3 * statistics.median(times)
        rows.append(row)
    return rows


def in_subprocess(*args: str) -> object:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(
        tokens, [r["na_ms"] for r in rows], "o-", label="neighbourhood attention (k=7), fwd+bwd"
    )
    ax.loglog(tokens, [r["full_ms"] for r in rows], "s-", label="full attention (SDPA), fwd+bwd")
    ax.loglog(tokens, [r["backbone_ms"] for r in rows], "^-", label="NAT-Mini backbone, forward")
    ax.set_xlabel("tokens of the stage-1 map (image pixels / 16)")
    ax.set_ylabel("ms")
    ax.set_title("Time against tokens, 2 CPU cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("train", "tokens", "both"), default="both")
    parser.add_argument("--backends", default="torch,fused")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sides", default="16,32,48,64,96,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs="*")
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        if kind == "train":
            print(json.dumps(train_worker(rest[0], int(rest[1]), int(rest[2]))))
        else:
            print(json.dumps(tokens_worker([int(s) for s in rest[0].split(",")], int(rest[1]))))
        return
    if args.part in ("train", "both"):
        print("| backend | batch | s/step | img/s | peak RSS (GiB) |\n|---|---:|---:|---:|---:|")
        for backend in args.backends.split(","):
            r = in_subprocess("train", backend, str(args.batch), str(args.steps))
            print(
                f"| {r['backend']} | {r['batch']} | {r['s_per_step']:.2f} | {r['img_per_s']:.2f} | {r['peak_rss_gib']:.2f} |"
            )
    if args.part in ("tokens", "both"):
        rows = in_subprocess("tokens", args.sides, str(args.repeats))
        print(
            "| side | tokens | NA ms | full ms | full / NA | NA us/token | full us/token | backbone ms | backbone us/token |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            t = r["tokens"]
            print(
                f"| {r['side']} | {t} | {r['na_ms']:.2f} | {r['full_ms']:.2f} | {r['full_ms'] / r['na_ms']:.1f} | "
                f"{1e3 * r['na_ms'] / t:.2f} | {1e3 * r['full_ms'] / t:.2f} | {r['backbone_ms']:.1f} | "
                f"{1e3 * r['backbone_ms'] / t:.2f} |"
            )
        plot(rows, HERE / "seg_tokens.png")


if __name__ == "__main__":
    main()
