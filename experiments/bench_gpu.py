"""On a CUDA GPU: NAT-Mini against Swin-T in bf16 training, NAT-Mini's share of the GPU's peak
FLOP/s, and the fast backends validated against the torch backend.

    python experiments/bench_gpu.py                   # needs CUDA; ~3-5 min
    python experiments/bench_gpu.py --batch 128 --steps 20
    python experiments/bench_gpu.py --out report/bench_gpu.md   # what scripts/gpu_check.sh runs

1. Training step, bf16 autocast, AdamW, 224 px, random data, median s/step after warm-up:
   timm's ``swin_tiny_patch4_window7_224`` where timm is importable (it needs torchvision, which
   nat_lightning never depends on: install it beside a CUDA torch for this run), then NAT-Mini
   on the ``torch`` backend. MFU: training FLOPs per image (counted by
   ``lightning.fabric.utilities.throughput.measure_flops``) x images/s / the GPU's bf16 peak as
   Lightning knows it.
2. Validation, fp32, forward and backward on random inputs: ``natten`` (NATTEN's fused kernels,
   no rpb; where NATTEN is installed) and ``flex`` (FlexAttention, block mask + rpb
   ``score_mod``, compiled) against the ``torch`` backend; max abs difference of outputs and
   input gradients.
3. NAT-Mini on the ``flex`` backend under ``torch.compile``, last: compiling takes the longest.

The headline comes first, and ``--out`` is rewritten after every line, so a run stopped at a
time limit keeps what it measured. A measurement that fails prints its error in its row and the
rest go on.
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from pathlib import Path

import torch

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.ops import na2d
from nat_lightning.ops.natten_adapter import natten_unavailable


class Tables:
    """Markdown lines, printed as they come and written whole to ``path`` (if any) each time."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.lines: list[str] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        if self.path:
            self.path.write_text("\n".join(self.lines) + "\n")


def failure(err: Exception) -> str:
    """One table cell for a measurement that raised; the traceback goes to stderr."""
    traceback.print_exc()
    first_line = (str(err).splitlines() or [""])[0]
    return f"failed: {type(err).__name__}: {first_line[:120]}"


def validate(device: str, out: Tables) -> None:
    torch.manual_seed(0)
    out.add("| backend | case | max abs diff out | max abs diff grads |")
    out.add("|---|---|---:|---:|")
    cases = (("natten", False, 1), ("natten", False, 2), ("flex", True, 1), ("flex", True, 2))
    for name, rpb_on, dilation in cases:
        case = f"rpb={rpb_on}, dilation={dilation}"
        shape = (2, 28, 28, 4, 32)
        q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
        rpb = torch.randn(4, 13, 13, device=device, requires_grad=True) if rpb_on else None
        reason = natten_unavailable(q, rpb, False, True) if name == "natten" else None
        if reason is not None:
            out.add(f"| {name} | {case} | skipped: {reason} | |")
            continue
        leaves = [t for t in (q, k, v, rpb) if t is not None]
        try:
            results = []
            for backend in ("torch", name):
                fn = na2d if backend != "flex" else torch.compile(na2d, fullgraph=False)
                result = fn(q, k, v, 7, dilation, rpb, backend=backend)
                grads = torch.autograd.grad(result, leaves, torch.ones_like(result))
                results.append((result, grads))
        except Exception as err:  # noqa: BLE001 - one failed case must not hide the others
            out.add(f"| {name} | {case} | {failure(err)} | |")
            continue
        (o1, g1), (o2, g2) = results
        grad_err = max((a - b).abs().max().item() for a, b in zip(g1, g2))
        out.add(f"| {name} | {case} | {(o1 - o2).abs().max().item():.2e} | {grad_err:.2e} |")


def build(name: str, backend: str):
    if name == "swin_t":
        import timm

        return timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000)
    return NatForImageClassification(
        NatConfig.from_variant("nat_mini", num_labels=1000, attention_backend=backend)
    )


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

    return measure_training_flops(
        NatConfig.from_variant("nat_mini", num_labels=1000), (1, 3, 224, 224)
    )


def speed_row(
    name: str, backend: str, compile_it: bool, a, swin, mfu_per_img_s
) -> tuple[str, float | None]:
    """One row of the training table and the images/s it measured (None where it measured none).

    ``swin``: Swin-T's images/s for the ratio column; ``mfu_per_img_s``: FLOPs per image / peak.
    """
    label = f"{name} {backend}{' (compiled)' if compile_it else ''}".strip()
    try:
        model = build(name, backend).to("cuda")
    except ImportError as err:
        return f"| {label} | skipped: {err} | | |", None
    try:
        model = torch.compile(model) if compile_it else model
        img_s = a.batch / train_step_seconds(model, a.batch, a.steps, a.warmup, "cuda")
    except Exception as err:  # noqa: BLE001 - the other rows still run
        return f"| {label} | {failure(err)} | | |", None
    finally:
        del model
        torch.cuda.empty_cache()
    ratio = f"{img_s / swin:.2f}x" if swin else "n/a"
    mfu = f"{img_s * mfu_per_img_s:.1%}" if mfu_per_img_s and name == "nat_mini" else "n/a"
    return f"| {label} | {img_s:.1f} | {ratio} | {mfu} |", img_s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--out", help="also write the tables (markdown) here, rewritten after every line"
    )
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    from lightning.fabric.utilities.throughput import get_available_flops

    out = Tables(a.out)
    out.add(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    peak = get_available_flops(torch.device("cuda"), torch.bfloat16)
    flops = training_flops_per_image()
    peak_t = f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown to Lightning (no MFU)"
    out.add(f"NAT-Mini training FLOPs per image: {flops / 1e9:.2f} G; bf16 peak: {peak_t}")
    mfu_per_img_s = flops / peak if peak else None

    out.add(f"\n| bf16 training, batch {a.batch}, 224 px | img/s | vs Swin-T | MFU |")
    out.add("|---|---:|---:|---:|")
    row, swin = speed_row("swin_t", "", False, a, None, mfu_per_img_s)
    out.add(row)
    out.add(speed_row("nat_mini", "torch", False, a, swin, mfu_per_img_s)[0])

    out.add("\nbackends against the torch backend, fp32, forward and input gradients:\n")
    validate("cuda", out)

    out.add(f"\n| bf16 training, batch {a.batch}, 224 px | img/s | vs Swin-T | MFU |")
    out.add("|---|---:|---:|---:|")
    out.add(speed_row("nat_mini", "flex", True, a, swin, mfu_per_img_s)[0])


if __name__ == "__main__":
    main()
