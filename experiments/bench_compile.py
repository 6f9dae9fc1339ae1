"""torch.compile against eager mode on the CPU: NAT-Mini and Swin-T, training and inference images/s.

    python experiments/bench_compile.py                          # ~30 min on 2 busy cores
    python experiments/bench_compile.py --models nat_mini --steps 3   # NAT-Mini only, shorter

One worker process per model; inside it an eager copy and a compiled copy of the same weights
(``module.compile()``, inductor's default mode, as ``--model.compile true`` does) take turns, step
by step, so both see the same machine state; medians after the warm-up steps. The compiled
copy's first steps (compilation included) are not timed; their seconds are reported apart.
Training step: fp32, batch 16, 224x224, AdamW (eager), cross-entropy, random images and labels.
Inference: eval mode, no_grad, the same batch.

NAT-Mini's neighborhood attention is one opaque op in the compiled graph (nat_lightning.ops.rows,
a torch.library custom op running the row kernel); inductor compiles the rest. Swin-T is timm's
``swin_tiny_patch4_window7_224`` from experiments/.venv-timm, created on first use as in
bench_model.py (timm needs torchvision, which cannot live beside the project's CPU torch).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

# experiments/ is on sys.path when run as a script
from bench_model import build, ensure_timm_venv, logits_of


def alternate(steps: dict, warmup: int, rounds: int) -> dict:
    """Seconds of each zero-argument step: the first ``warmup`` calls of each (compilation
    included) summed, then the median of ``rounds`` calls taken in turn."""
    first = {name: 0.0 for name in steps}
    times = {name: [] for name in steps}
    for i in range(warmup + rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
            if i < warmup:
                first[name] += seconds
            else:
                times[name].append(seconds)
    return {
        name: {"s_per_step": statistics.median(t), "warmup_s": first[name]}
        for name, t in times.items()
    }


def measure(name: str, batch: int, warmup: int, rounds: int) -> dict:
    """Runs inside a worker process: eager and compiled, training then inference."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    eager = build(name, "auto")
    compiled = copy.deepcopy(eager)
    compiled.compile()
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))

    def train_step(model, opt):
        def step():
            loss = F.cross_entropy(logits_of(model(images)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def infer_step(model):
        def step():
            with torch.no_grad():
                logits_of(model(images))

        return step

    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (eager, compiled)}
    for model in opts:
        model.train()
    train = alternate(
        {"eager": train_step(eager, opts[eager]), "compiled": train_step(compiled, opts[compiled])},
        warmup,
        rounds,
    )
    for model in opts:
        model.eval()
    infer = alternate(
        {"eager": infer_step(eager), "compiled": infer_step(compiled)}, warmup, rounds
    )
    return {
        "model": name,
        "batch": batch,
        "train": train,
        "infer": infer,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_worker(python: str, name: str, a) -> dict:
    args = [
        python,
        __file__,
        "--worker",
        name,
        "--batch",
        str(a.batch),
        "--warmup",
        str(a.warmup),
        "--steps",
        str(a.steps),
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=a.timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--models", default="nat_mini,swin_t", help="comma-separated: nat_mini, swin_t")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed steps of each copy first (compilation)"
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps of each copy, alternating")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(measure(a.worker, a.batch, a.warmup, a.steps)))
        return
    results = {}
    for name in a.models.split(","):
        python = str(ensure_timm_venv()) if name == "swin_t" else sys.executable
        results[name] = r = run_worker(python, name, a)
        print(f"  {name}: torch {r['torch']}, {r['threads']} threads", flush=True)
    print(
        f"\n| batch {a.batch}, 224 px, fp32 | mode | eager img/s | compiled img/s | compiled / eager "
        "| compiled warm-up s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        for mode in ("train", "infer"):
            eager, comp = (a.batch / r[mode][k]["s_per_step"] for k in ("eager", "compiled"))
            print(
                f"| {name} | {mode} | {eager:.2f} | {comp:.2f} | {comp / eager:.2f}x "
                f"| {r[mode]['compiled']['warmup_s']:.0f} |"
            )
    if {"nat_mini", "swin_t"} <= results.keys():
        print("\n| NAT-Mini / Swin-T | eager | compiled |\n|---|---:|---:|")
        for mode in ("train", "infer"):
            n, s = (results[m][mode] for m in ("nat_mini", "swin_t"))
            ratio = {k: s[k]["s_per_step"] / n[k]["s_per_step"] for k in ("eager", "compiled")}
            print(f"| {mode} | {ratio['eager']:.2f}x | {ratio['compiled']:.2f}x |")


if __name__ == "__main__":
    main()
