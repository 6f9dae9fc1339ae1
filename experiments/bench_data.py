"""Data pipeline on the CPU: decode + augment images/s per worker at 224 px, the DataLoader with
default workers, and whether it outpaces NAT-Mini's CPU training step.

    python experiments/bench_data.py          # ~2 min on 2 cores

Images: 256 synthetic 500x375 JPEGs (quality 90, ImageNet-like size), in an in-memory
`datasets.Dataset`, read through HFImageDataModule exactly as training reads them: bytes ->
PIL decode -> RGB -> the paper's train pipeline (RandomResizedCrop, flip, RandAugment m9,
random erasing) -> tensor.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from nat_lightning import HFImageDataModule, NatConfig, NatForImageClassification


def jpeg_dataset(n: int) -> Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        base = rng.integers(0, 255, (47, 63, 3), dtype=np.uint8)  # smooth-ish content, like photos
        image = PILImage.fromarray(base).resize((500, 375), PILImage.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        rows.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    return Dataset.from_dict({"image": rows, "label": [i % 10 for i in range(n)]}, features=features)


def per_worker(dm: HFImageDataModule, repeats: int) -> float:
    """Images/s of one process doing what one DataLoader worker does."""
    data = dm._data["train"]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(len(data)):
            data[i]
        rates.append(len(data) / (time.perf_counter() - start))
    return statistics.median(rates)


def loader_rate(dm: HFImageDataModule, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        loader = dm.train_dataloader()
        start = time.perf_counter()
        n = sum(len(b["labels"]) for b in loader)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def train_rate(batch: int, steps: int) -> float:
    model = NatForImageClassification(NatConfig.from_variant("nat_mini", num_labels=1000))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[3:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=4)
    a = p.parse_args()
    torch.manual_seed(0)
    ds = jpeg_dataset(a.images)
    dm = HFImageDataModule(ds, val_fraction=0.01, batch_size=16)
    dm.setup("fit")
    worker = per_worker(dm, a.repeats)
    loader = loader_rate(dm, a.repeats)
    train = train_rate(16, a.train_steps)
    print(f"torch threads {torch.get_num_threads()}, default num_workers {dm.num_workers}\n")
    print("| measurement | images/s |")
    print("|---|---:|")
    print(f"| decode + train augment, one worker (224 px) | {worker:.1f} |")
    print(f"| DataLoader, default workers ({dm.num_workers}), batch 16 | {loader:.1f} |")
    print(f"| NAT-Mini training step, batch 16, fp32 | {train:.2f} |")
    print(f"\nloader / training step = {loader / train:.1f}x")


if __name__ == "__main__":
    main()
