"""On a CUDA GPU: validate the fast backends against the torch backend, then NAT-Mini against
Swin-T in bf16 training, and NAT-Mini's share of the GPU's peak FLOP/s.

    python experiments/bench_gpu.py                   # needs CUDA; ~5 min
    python experiments/bench_gpu.py --batch 128 --steps 20

1. Validation, fp32, forward and backward on random inputs: ``natten`` (NATTEN's fused kernels,
   no rpb) and ``flex`` (FlexAttention, block mask + rpb ``score_mod``, compiled) against the
   ``torch`` backend; max abs difference of outputs and input gradients.
2. Training step, bf16 autocast, AdamW, 224 px, random data, median s/step after warm-up:
   NAT-Mini with each rpb-capable backend (``torch``; ``flex`` under ``torch.compile``) and
   timm's ``swin_tiny_patch4_window7_224`` where timm is importable (it needs torchvision,
   which nat_lightning never depends on: install it beside a CUDA torch for this run).
3. MFU: training FLOPs per image (counted by ``lightning.fabric.utilities.throughput.measure_flops``)
   x images/s / the GPU's bf16 peak as Lightning knows it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.ops import na2d


def validate(device: str) -> None:
    torch.manual_seed(0)
    print("| backend | case | max abs diff out | max abs diff grads |")
    print("|---|---|---:|---:|")
    for name, rpb_on, dilation in (("natten", False, 1), ("natten", False, 2), ("flex", True, 1), ("flex", True, 2)):
        shape = (2, 28, 28, 4, 32)
        q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
        rpb = torch.randn(4, 13, 13, device=device, requires_grad=True) if rpb_on else None
        leaves = [t for t in (q, k, v, rpb) if t is not None]
        results = []
        for backend in ("torch", name):
            fn = na2d if backend != "flex" else torch.compile(na2d, fullgraph=False)
            out = fn(q, k, v, 7, dilation, rpb, backend=backend)
            grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
            results.append((out, grads))
        (o1, g1), (o2, g2) = results
        grad_err = max((a - b).abs().max().item() for a, b in zip(g1, g2))
        print(f"| {name} | rpb={rpb_on}, dilation={dilation} | {(o1 - o2).abs().max().item():.2e} | {grad_err:.2e} |")


def build(name: str, backend: str):
    if name == "swin_t":
        import timm

        return timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000)
    return NatForImageClassification(NatConfig.from_variant("nat_mini", num_labels=1000, attention_backend=backend))


def train_step_seconds(model, batch: int, steps: int, warmup: int, device: str) -> float:
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    times = []
    for _ in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(images)
            logits = out if torch.is_tensor(out) else out.logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def training_flops_per_image() -> int:
    from nat_lightning.tasks.classifier import measure_training_flops

    return measure_training_flops(NatConfig.from_variant("nat_mini", num_labels=1000), (1, 3, 224, 224))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    device = "cuda"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    validate(device)

    runs = [("nat_mini", "torch", False), ("nat_mini", "flex", True), ("swin_t", "", False)]
    speed = {}
    for name, backend, compile_it in runs:
        try:
            model = build(name, backend).to(device)
        except ImportError as err:
            print(f"\n{name}: skipped ({err})")
            continue
        model = torch.compile(model) if compile_it else model
        seconds = train_step_seconds(model, a.batch, a.steps, a.warmup, device)
        speed[(name, backend)] = a.batch / seconds
        del model
        torch.cuda.empty_cache()

    from lightning.fabric.utilities.throughput import get_available_flops

    peak = get_available_flops(torch.device(device), torch.bfloat16)
    flops = training_flops_per_image()
    print(f"\n| bf16 training, batch {a.batch}, 224 px | img/s | vs Swin-T | MFU |")
    print("|---|---:|---:|---:|")
    swin = speed.get(("swin_t", ""))
    for (name, backend), img_s in speed.items():
        ratio = f"{img_s / swin:.2f}x" if swin else "n/a"
        mfu = f"{img_s * flops / peak:.1%}" if peak and name == "nat_mini" else "n/a"
        print(f"| {name} {backend} | {img_s:.1f} | {ratio} | {mfu} |")
    print(f"\nNAT-Mini training FLOPs per image: {flops / 1e9:.2f} G; bf16 peak: {peak / 1e12 if peak else 0:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
