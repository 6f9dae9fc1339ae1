"""NAT-Mini against Swin-T on CPU: training and inference images/s, and Lightning's overhead.

    python experiments/bench_model.py                 # ~15 min on 2 cores
    python experiments/bench_model.py --steps 4 --repeats 1   # a quick look
    python experiments/bench_model.py --sweep 4,8,16,32       # train img/s against batch size, plot
    python experiments/bench_model.py --backends torch,fused --no-lightning   # both CPU kernels
    python experiments/bench_model.py --model dinat_mini --backends torch,fused --no-lightning

NAT's attention backend is ``auto`` (on the CPU the fused C++ kernel where it builds, see
nat_lightning.ops) unless ``--backends`` names others; each is measured in turn with Swin.
Every measurement runs in its own subprocess, NAT and Swin alternating, so both see the same
machine state. Swin-T is timm's ``swin_tiny_patch4_window7_224``; timm needs torchvision, which
cannot live beside the project's CPU torch, so it runs from a separate virtual environment that
this script creates on first use (experiments/.venv-timm, ``pip install torch==2.14.1
torchvision==0.29.1 timm``); nat_lightning never depends on it.

Training step: fp32, batch 16, 224x224, AdamW, cross-entropy, random images and labels,
a plain PyTorch loop; median seconds per step after warm-up steps. Inference: eval mode,
no_grad, the same batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMM_VENV = HERE / ".venv-timm"


def build(name: str, backend: str):

    if name == "swin_t":
        import timm

        return timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000)
    from nat_lightning import NatConfig, NatForImageClassification

    return NatForImageClassification(
        NatConfig.from_variant(name, num_labels=1000, attention_backend=backend)
    )


def logits_of(out):
    return out if hasattr(out, "shape") else out.logits


def measure(name: str, mode: str, batch: int, steps: int, warmup: int, backend: str) -> dict:
    """Runs inside a worker process: median seconds per step of ``mode`` for model ``name``."""
    import torch

    torch.manual_seed(0)
    model = build(name, backend)
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    times = []
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for i in range(warmup + steps):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(logits_of(model(images)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
    else:
        model.eval()
        with torch.no_grad():
            for i in range(warmup + steps):
                start = time.perf_counter()
                logits_of(model(images))
                times.append(time.perf_counter() - start)
    step = statistics.median(times[warmup:])
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name,
        "mode": mode,
        "s_per_step": step,
        "img_s": batch / step,
        "params_m": params / 1e6,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def measure_lightning(batch: int, steps: int, warmup: int) -> dict:
    """NatClassifier on lightning.Trainer, same step as the plain loop (AdamW, constant data)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Dataset

    from nat_lightning import NatClassifier

    class Fixed(Dataset):
        def __len__(self):
            return (warmup + steps) * batch

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {
                "pixel_values": torch.randn(3, 224, 224, generator=g),
                "labels": torch.tensor(i % 1000),
            }

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    model = NatClassifier(
        model="nat_mini", num_classes=1000, label_smoothing=0.0, warmup_epochs=0.0
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(Fixed(), batch_size=batch))
    step = statistics.median(timer.times[warmup:])
    return {
        "model": "nat_mini (Lightning)",
        "mode": "train",
        "s_per_step": step,
        "img_s": batch / step,
    }


def ensure_timm_venv() -> Path:
    python = TIMM_VENV / "bin" / "python"
    if not python.exists():
        print(
            f"creating {TIMM_VENV} (torch 2.14.1 + torchvision 0.29.1 + timm; several GB) ...",
            flush=True,
        )
        subprocess.run([sys.executable, "-m", "venv", str(TIMM_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "torch==2.14.1",
                "torchvision==0.29.1",
                "timm",
            ],
            check=True,
        )
    return python


def run_worker(python: str, *args: str) -> dict:
    out = subprocess.run([python, __file__, "--worker", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (the allocator warms up over ~2)"
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="alternating NAT/Swin measurements per mode"
    )
    p.add_argument("--backend", default="auto", help="NAT attention backend")
    p.add_argument(
        "--backends", help="comma-separated NAT backends measured in turn (e.g. torch,fused)"
    )
    p.add_argument(
        "--model", default="nat_mini", help="the NAT variant against Swin-T (e.g. dinat_mini)"
    )
    p.add_argument("--no-lightning", action="store_true")
    p.add_argument(
        "--sweep", help="comma-separated batch sizes: training img/s of both models, and a plot"
    )
    a = p.parse_args()
    if a.worker is not None:
        name, mode = a.worker
        result = (
            measure_lightning(a.batch, a.steps, a.warmup)
            if mode == "lightning"
            else measure(name, mode, a.batch, a.steps, a.warmup, a.backend)
        )
        print(json.dumps(result))
        return
    timm_python = str(ensure_timm_venv())
    if a.sweep:
        return sweep([int(b) for b in a.sweep.split(",")], a, timm_python)
    common = ["--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    backends = a.backends.split(",") if a.backends else [a.backend]
    results: dict[tuple[str, str], list[float]] = {}
    for mode in ("train", "infer"):
        for _ in range(a.repeats):
            runs = [(a.model, backend, sys.executable) for backend in backends] + [
                ("swin_t", "-", timm_python)
            ]
            for name, backend, python in runs:
                r = run_worker(
                    python, name, mode, *common, "--backend", backend if backend != "-" else "auto"
                )
                results.setdefault((name, backend, mode), []).append(r["img_s"])
                print(
                    f"  {name:10s} {backend:6s} {mode:5s} {r['img_s']:.2f} img/s ({r['params_m']:.1f}M params, "
                    f"torch {r['torch']})",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"\n| batch {a.batch}, 224 px, fp32 | backend | {a.model} img/s | Swin-T img/s | NAT / Swin |"
    )
    print("|---|---|---:|---:|---:|")
    for mode in ("train", "infer"):
        for backend in backends:
            n, s = med[(a.model, backend, mode)], med[("swin_t", "-", mode)]
            print(f"| {mode} | {backend} | {n:.2f} | {s:.2f} | {n / s:.2f}x |")
    if not a.no_lightning:
        lightning: dict[str, list[float]] = {}
        for _ in range(a.repeats):
            for mode in ("train", "lightning"):
                r = run_worker(sys.executable, "nat_mini", mode, *common, "--backend", a.backend)
                lightning.setdefault(mode, []).append(r["img_s"])
                print(f"  nat_mini   {mode:9s} {r['img_s']:.2f} img/s", flush=True)
        plain, light = (
            statistics.median(lightning["train"]),
            statistics.median(lightning["lightning"]),
        )
        print(
            f"\nLightning Trainer vs plain loop (NAT-Mini train): {light:.2f} vs {plain:.2f} img/s = {light / plain:.3f}"
        )


def sweep(batches: list[int], a, timm_python: str):
    """Training images/s against batch size, NAT-Mini and Swin-T alternating; writes model_batch.png."""
    results: dict[str, list[float]] = {
        "nat_mini": [],
        "swin_t": [],
    }  # "nat_mini": the --model variant
    for batch in batches:
        common = [
            "--batch",
            str(batch),
            "--steps",
            str(a.steps),
            "--warmup",
            str(a.warmup),
            "--backend",
            a.backend,
        ]
        runs: dict[str, list[float]] = {"nat_mini": [], "swin_t": []}
        for _ in range(a.repeats):  # alternating
            for key, name, python in (
                ("nat_mini", a.model, sys.executable),
                ("swin_t", "swin_t", timm_python),
            ):
                runs[key].append(run_worker(python, name, "train", *common)["img_s"])
        for key, values in results.items():
            values.append(statistics.median(runs[key]))
        print(
            f"  batch {batch}: {a.model} {results['nat_mini'][-1]:.2f} img/s, Swin-T {results['swin_t'][-1]:.2f}",
            flush=True,
        )
    print(f"\n| batch | {a.model} ({a.backend}) img/s | Swin-T img/s | NAT / Swin |")
    print("|---:|---:|---:|---:|")
    for i, batch in enumerate(batches):
        n, s = results["nat_mini"][i], results["swin_t"][i]
        print(f"| {batch} | {n:.2f} | {s:.2f} | {n / s:.2f}x |")
    plot_sweep(batches, results)


def plot_sweep(batches: list[int], results: dict[str, list[float]]) -> None:
    """model_batch.png: training images/s of both models against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, label in (("nat_mini", "NAT-Mini (nat_lightning)"), ("swin_t", "Swin-T (timm)")):
        ax.plot(batches, results[name], marker="o", label=label)
    ax.set(
        xscale="log",
        xlabel="batch size",
        ylabel="training images/s",
        title="fp32 training step, 224 px, CPU",
    )
    ax.minorticks_off()
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "model_batch.png", dpi=110)
    print("wrote experiments/model_batch.png")


if __name__ == "__main__":
    main()
