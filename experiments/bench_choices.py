"""The measurements behind two small choices in the CPU path, re-run on demand.

    python experiments/bench_choices.py       # ~2 min on 2 cores

1. Strip width of the row kernel (``ops/rows.py``, ``_strip_width``): 7, 8 and 14 columns at
   NAT-Mini's three attention shapes (batch 16, k=7, fp32), forward+backward and forward only.
2. The conv tokenizer (``models/nat.py``, ``ConvTokenizer``) on NCHW input against channels-last,
   forward+backward and forward only, batch 16 at 224 px.

Every case alternates with the others in the same process, medians after two warm-up rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nat_lightning.models.nat import ConvTokenizer
from nat_lightning.ops import na2d_torch

SHAPES = {"stage 1": (56, 2), "stage 2": (28, 4), "stage 3": (14, 8)}  # side, heads; head_dim 32


def alternate(cases: dict, rounds: int) -> dict:
    """Median seconds of each zero-argument callable, run in turn ``rounds`` times."""
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[2:]) for name, t in times.items()}


def strip_widths(batch: int, rounds: int) -> None:
    print("| shape | mode | 7 columns ms | 8 columns ms | 14 columns ms |")
    print("|---|---|---:|---:|---:|")
    for name, (side, heads) in SHAPES.items():
        for train in (True, False):
            q, k, v = (
                torch.randn(batch, side, side, heads, 32, requires_grad=train) for _ in range(3)
            )
            rpb = torch.zeros(heads, 13, 13, requires_grad=train)

            def run(tile, q=q, k=k, v=v, rpb=rpb, train=train):
                out = na2d_torch(q, k, v, 7, 1, rpb, tile_size=tile)
                if train:
                    out.backward(torch.ones_like(out))

            med = alternate({t: (lambda t=t: run(t)) for t in (7, 8, 14)}, rounds)
            mode = "fwd+bwd" if train else "fwd"
            print(
                f"| {name} ({batch}, {side}, {heads}, 32) | {mode} | "
                + " | ".join(f"{med[t] * 1e3:.1f}" for t in (7, 8, 14))
                + " |",
                flush=True,
            )


def tokenizer(batch: int, rounds: int) -> None:
    tok = ConvTokenizer(3, 64)
    x = torch.randn(batch, 3, 224, 224)

    def nchw():
        return tok.norm(tok.proj(x).permute(0, 2, 3, 1))  # the previous forward

    def train(fn):
        fn().sum().backward()

    def infer(fn):
        with torch.no_grad():
            fn()

    print("\n| tokenizer, batch 16, 224 px | NCHW ms | channels-last ms | speed-up |")
    print("|---|---:|---:|---:|")
    for mode, step in (("fwd+bwd", train), ("fwd", infer)):
        med = alternate(
            {"nchw": lambda step=step: step(nchw), "cl": lambda step=step: step(lambda: tok(x))},
            rounds,
        )
        print(
            f"| {mode} | {med['nchw'] * 1e3:.1f} | {med['cl'] * 1e3:.1f} | {med['nchw'] / med['cl']:.2f}x |"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--rounds", type=int, default=12, help="alternating rounds; the first two are warm-up"
    )
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    strip_widths(a.batch, a.rounds)
    tokenizer(a.batch, a.rounds)


if __name__ == "__main__":
    main()
