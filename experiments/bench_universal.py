"""Mask2Former + NAT-Mini against UPerNet + NAT-Mini on the CPU: training images/s and per-step
peak memory at 512x512.

    python experiments/bench_universal.py --warmup 1 --steps 3 --out experiments/results/bench_universal.md
    python experiments/bench_universal.py --smoke      # 64x64, 1 step each: a check that it runs

Machine of the recorded run (experiments/results/bench_universal.md and .json): the development
sandbox, an x86_64 VM (Intel Xeon, AVX-512), 2 cores (2 torch threads), 23 GiB, no GPU, torch
2.13.0+cpu, transformers 5.25.0, Python 3.11; shared with other jobs, so step times move a lot
between rounds (the 1-min load average is printed before and after).

Compared, in one process, the two taking turns step by step so both see the same machine state:

- Mask2Former: ``NatForUniversalSegmentation.from_variant("nat_mini", "mask2former",
  num_labels=133)``, transformers' default heads (the paper's: 100 queries, 6 pixel-decoder
  layers of multi-scale deformable attention, 10 decoder layers, 12544 sampled points per mask
  loss), COCO panoptic's 133 classes. Targets: per image 10 random rectangles as (10, H, W)
  float 0/1 ``mask_labels`` and random ``class_labels``; the loss includes transformers'
  Hungarian matching and the auxiliary losses of every decoder layer.
- UPerNet: the network NatSegmenter builds for configs/ade20k_upernet_nat_mini.yaml
  (``tasks.seg_network.segmentation_config`` on NAT-Mini: decode head 512 channels, auxiliary
  head 256, weight 0.4), ADE20K's 150 classes; ``labels`` (B, H, W) random class ids.

Both: the same NAT-Mini backbone config (attention backend ``auto`` unless --backend), fp32,
random images, training mode, AdamW (lr 1e-4), a plain PyTorch loop: forward with targets,
``loss.backward()``, ``step()``, ``zero_grad``. ``--warmup`` steps of each are not timed; the
median of ``--steps`` timed steps is reported. Memory: before each step the resident-set peak
(VmHWM) is reset through /proc/self/clear_refs; "step peak RSS" is the process's peak during the
step (both models' weights, gradients and AdamW states included), "step growth" that peak less
the resident set at the step's start (a lower bound of the step's working memory: the allocator
keeps some of what the other model's step freed). Both are the maximum over the timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nat_lightning import NatConfig, NatForSemanticSegmentation
from nat_lightning.models.universal import NatForUniversalSegmentation
from nat_lightning.tasks.seg_network import segmentation_config

COCO_PANOPTIC_CLASSES = 133
ADE20K_CLASSES = 150


def _rss_kib(field: str) -> int:
    """VmRSS or VmHWM of this process, KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rectangles(batch: int, size: int, count: int, classes: int, gen: torch.Generator):
    """Per image, ``count`` random rectangles as (count, size, size) float 0/1 masks and
    (count,) long class ids: Mask2Former's ``mask_labels`` and ``class_labels``."""
    masks, labels = [], []
    for _ in range(batch):
        corners = torch.randint(0, size, (count, 2, 2), generator=gen).sort(dim=1).values
        image = torch.zeros(count, size, size)
        for m, ((y0, x0), (y1, x1)) in zip(image, corners.tolist(), strict=True):
            m[y0 : y1 + 1, x0 : x1 + 1] = 1.0  # at least one pixel
        masks.append(image)
        labels.append(torch.randint(0, classes, (count,), generator=gen))
    return masks, labels


def build(size: int, batch: int, backend: str) -> dict:
    """Both networks, their optimizers and their fixed synthetic batches, as training steps."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    overrides = {"attention_backend": backend}
    mask2former = NatForUniversalSegmentation.from_variant(
        "nat_mini", "mask2former", backbone_overrides=overrides, num_labels=COCO_PANOPTIC_CLASSES
    )
    upernet = NatForSemanticSegmentation(
        segmentation_config(NatConfig.from_variant("nat_mini"), ADE20K_CLASSES, None, {}, overrides)
    )
    images = torch.randn(batch, 3, size, size, generator=gen)
    masks, classes = rectangles(batch, size, 10, COCO_PANOPTIC_CLASSES, gen)
    labels = torch.randint(0, ADE20K_CLASSES, (batch, size, size), generator=gen)
    inputs = {
        "mask2former": {"mask_labels": masks, "class_labels": classes},
        "upernet": {"labels": labels},
    }
    steps = {}
    for name, network in (("mask2former", mask2former), ("upernet", upernet)):
        network.train()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

        def step(network=network, optimizer=optimizer, targets=inputs[name]):
            network(images, **targets).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = {"network": network, "step": step}
    return steps


def parameters(network: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in network.parameters())
    backbone = sum(p.numel() for p in network.backbone.parameters())
    return {"params": total, "backbone_params": backbone, "head_params": total - backbone}


def alternate(steps: dict, warmup: int, rounds: int) -> dict:
    """Each model's median seconds per step over ``rounds`` steps taken in turn after ``warmup``
    untimed ones, and its largest per-step peak and growth of the resident set (GiB)."""
    record = {name: {"times": [], "peak": [], "growth": []} for name in steps}
    for i in range(warmup + rounds):
        for name, entry in steps.items():
            base = _rss_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
            start = time.perf_counter()
            entry["step"]()
            seconds = time.perf_counter() - start
            peak = _rss_kib("VmHWM")
            print(
                f"  step {i} {name}: {seconds:.2f} s, peak RSS {peak / 2**20:.2f} GiB", flush=True
            )
            if i >= warmup:
                record[name]["times"].append(seconds)
                record[name]["peak"].append(peak / 2**20)
                record[name]["growth"].append((peak - base) / 2**20)
    return {
        name: {
            "s_per_step": statistics.median(r["times"]),
            "step_times_s": r["times"],
            "peak_rss_gib": max(r["peak"]),
            "growth_gib": max(r["growth"]),
        }
        for name, r in record.items()
    }


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def table(results: dict, a) -> list[str]:
    lines = [
        f"| {a.size}x{a.size}, batch {a.batch}, fp32, training | params (M) | backbone / heads (M) "
        "| s/step | img/s | step peak RSS (GiB) | step growth (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "mask2former": "Mask2Former + NAT-Mini (133 cl.)",
        "upernet": "UPerNet + NAT-Mini (150 cl.)",
    }
    for name, r in results.items():
        lines.append(
            f"| {labels[name]} | {r['params'] / 1e6:.1f} | {r['backbone_params'] / 1e6:.1f} / "
            f"{r['head_params'] / 1e6:.1f} | {r['s_per_step']:.2f} | {r['img_per_s']:.3f} | "
            f"{r['peak_rss_gib']:.2f} | {r['growth_gib']:.2f} |"
        )
    ratio = results["mask2former"]["img_per_s"] / results["upernet"]["img_per_s"]
    lines.append(f"\nMask2Former / UPerNet img/s: **{ratio:.2f}x**")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=512, help="square image side, pixels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps of each model, in turn")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each model first")
    p.add_argument("--backend", default="auto", help="the backbone's attention backend")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument(
        "--out", help="also write the table here (markdown), and the raw figures beside it (.json)"
    )
    p.add_argument("--smoke", action="store_true", help="64x64, no warm-up, 1 step each")
    a = p.parse_args()
    if a.smoke:
        a.size, a.warmup, a.steps = 64, 0, 1
    if a.steps < 1 or a.warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {a.steps=} {a.warmup=}")
    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine(), flush=True)
    steps = build(a.size, a.batch, a.backend)
    counts = {name: parameters(entry["network"]) for name, entry in steps.items()}
    for name, c in counts.items():
        print(
            f"{name}: {c['params']:,} parameters (backbone {c['backbone_params']:,}, "
            f"heads {c['head_params']:,})",
            flush=True,
        )
    load_before = os.getloadavg()[0]
    results = alternate(steps, a.warmup, a.steps)
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    for name, r in results.items():
        r.update(counts[name], img_per_s=a.batch / r["s_per_step"])
    lines = [
        f"{machine()}; attention backend {a.backend}; median of {a.steps} steps after "
        f"{a.warmup} warm-up step(s), the two models alternating; {load}",
        "",
        *table(results, a),
    ]
    print("\n" + "\n".join(lines))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        settings = {k: getattr(a, k) for k in ("size", "batch", "steps", "warmup", "backend")}
        report = {"machine": machine(), "load": load, **settings, "results": results}
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
