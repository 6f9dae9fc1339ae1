"""Data pipeline throughput: JPEG decode + training augmentation per worker, and the DataLoader.

    python experiments/bench_data.py                      # 224 px, 256 synthetic 500x375 JPEGs
    python experiments/bench_data.py --images 512 --runs 7 --batch-size 128

Per worker: one process decodes and augments every image (HFImageDataModule's ExampleDecoder with
the default training pipeline: RandomResizedCrop, flip, RandAugment n=2 m=9, colour jitter, random
erasing, normalisation), timed over ``--runs`` passes; the table gives the median. The eval
pipeline (resize to 256, centre crop 224) is timed the same way. DataLoader: the DataModule's own
train loader with its default workers (min(4, CPUs)), timed from the first batch, so that worker
start-up is not counted; median over the runs.

Images are smooth random colour fields with noise, saved as JPEG quality 90, about the file size
of ImageNet photos (~100 KB at 500x375).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from nat_lightning.data import HFImageDataModule
from nat_lightning.data.columns import Columns
from nat_lightning.data.images import ExampleDecoder
from nat_lightning.data.transforms import eval_transform, train_transform


def synthetic_jpeg(rng: np.random.Generator, width: int = 500, height: int = 375) -> bytes:
    """A smooth random colour field with noise: compresses like a photo, not like flat colour."""
    coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
    field = np.asarray(
        PILImage.fromarray(coarse).resize((width, height), PILImage.BICUBIC), np.int16
    )
    pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def jpeg_dataset(count: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    images = [{"bytes": synthetic_jpeg(rng), "path": None} for _ in range(count)]
    return Dataset.from_dict(
        {"image": images, "label": [i % 10 for i in range(count)]}, features=features
    )


def per_worker(data: Dataset, transform, random: bool, runs: int) -> float:
    """Median images/s of decode + transform in this one process."""
    decoder = ExampleDecoder(
        Columns("image", "label", tuple(map(str, range(10))), None), transform, random
    )
    rows = list(data.cast_column("image", Image(decode=False)))
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for row in rows:
            decoder(row)
        rates.append(len(rows) / (time.perf_counter() - start))
    return statistics.median(rates)


def loader_rate(data: Dataset, image_size: int, batch_size: int, runs: int) -> tuple[float, int]:
    """Median images/s of the DataModule's training DataLoader (default workers), and its workers."""
    dm = HFImageDataModule(data, val_split=None, image_size=image_size, batch_size=batch_size)
    loader = dm.train_dataloader()
    rates = []
    for _ in range(runs):
        batches = iter(loader)
        next(batches)  # workers started and warm
        start, count = time.perf_counter(), 0
        for batch in batches:
            count += len(batch["labels"])
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), dm.num_workers


def train_rate(batch: int, steps: int) -> float:
    """NAT-Mini's fp32 CPU training step (AdamW), images/s: what the loader has to keep up with."""
    from nat_lightning import NatConfig, NatForImageClassification

    model = NatForImageClassification(NatConfig.from_variant("nat_mini", num_labels=1000))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps + 3):  # 3 warm-up steps
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256, help="synthetic JPEGs to decode per run")
    parser.add_argument("--runs", type=int, default=5, help="timed passes; the median is reported")
    parser.add_argument("--image-size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = jpeg_dataset(args.images)
    kb = (
        statistics.mean(
            len(row["bytes"]) for row in data.cast_column("image", Image(decode=False))["image"]
        )
        / 1e3
    )
    train = per_worker(data, train_transform(args.image_size), True, args.runs)
    evaluate = per_worker(data, eval_transform(args.image_size), False, args.runs)
    loader, workers = loader_rate(data, args.image_size, args.batch_size, args.runs)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{args.images} JPEGs 500x375 (mean {kb:.0f} KB), {args.image_size} px, median of {args.runs} runs\n"
    )
    print("| what | images/s |")
    print("|---|---:|")
    print(f"| decode + train augmentation, 1 worker | {train:.0f} |")
    print(f"| decode + eval resize/crop, 1 worker | {evaluate:.0f} |")
    print(f"| train DataLoader, {workers} workers, batch {args.batch_size} | {loader:.0f} |")
    step = train_rate(16, 4)
    print(f"| NAT-Mini training step, batch 16, fp32 (for comparison) | {step:.2f} |")
    print(f"\nThe loader with default workers outpaces the CPU training step {loader / step:.0f}x.")


if __name__ == "__main__":
    main()
