"""Torch datasets over HF splits: decode, convert to RGB, augment; broken images become None.

All randomness of the augmentations flows from torch's RNG (each example re-seeds the
albumentations pipeline from it), so ``seed_everything`` and a restored RNG state reproduce a run.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .images import decode
from .sources import Columns
from .transforms import to_tensor

PAD_LABEL = -100  # padding examples on short streaming shards: no loss, no metrics


def process(example: dict, columns: Columns, transform, label_ids: dict | None, random: bool, index):
    image = decode(example[columns.image])
    if image is None:
        return None
    if random:
        transform.set_random_seed(int(torch.randint(2**31 - 1, ())))
    label = example.get(columns.label, PAD_LABEL)
    label = label_ids[label] if label_ids is not None and label is not None else label
    return {"pixel_values": to_tensor(transform(image=image)["image"]), "labels": int(label), "ids": index}


class ImageExamples(Dataset):
    """Map-style: example ``i`` of an HF split, transformed."""

    def __init__(self, split, columns: Columns, transform, random: bool, ids=None):
        self.split, self.columns, self.transform, self.random, self.ids = split, columns, transform, random, ids
        self.label_ids = {n: i for i, n in enumerate(columns.names)} if columns.string_labels else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return process(self.split[i], self.columns, self.transform, self.label_ids, self.random,
                       self.ids[i] if self.ids is not None else i)


class StreamingExamples(IterableDataset):
    """Iterable over this rank's part of an HF IterableDataset (already split by node).

    HF hands each DataLoader worker its own shards. To keep DDP ranks in lock-step every worker
    yields exactly ``quota`` examples: short workers add copies flagged ``labels=-100``, so every
    rank runs the same number of batches and no rank waits forever in an all-reduce.
    """

    def __init__(self, split, columns: Columns, transform, random: bool, quota: int, workers: int,
                 batch_size: int, image_size: int):
        self.split, self.columns, self.transform, self.random = split, columns, transform, random
        self.quota, self.workers, self.batch_size, self.image_size = quota, max(1, workers), batch_size, image_size
        self.label_ids = {n: i for i, n in enumerate(columns.names)} if columns.string_labels else None

    def __len__(self) -> int:  # batches per rank = workers * ceil(quota / batch_size)
        return self.workers * math.ceil(self.quota / self.batch_size) * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.split.set_epoch(epoch)  # HF shares it with persistent workers

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        count, pad = 0, None
        for i, example in enumerate(self.split):
            item = process(example, self.columns, self.transform, self.label_ids, self.random, f"w{worker}-{i}")
            if item is not None and pad is None:
                pad = {**item, "labels": PAD_LABEL, "ids": "padding"}
            count += 1
            yield item
        if pad is None:
            pad = {"pixel_values": torch.zeros(3, self.image_size, self.image_size), "labels": PAD_LABEL,
                   "ids": "padding"}
        for _ in range(self.quota - count):
            yield pad


def collate(items: list) -> dict:
    """Stack the good examples; count the broken ones (None) in ``num_skipped``."""
    good = [x for x in items if x is not None]
    if good:
        pixels = torch.stack([x["pixel_values"] for x in good])
    else:
        pixels = torch.zeros(0, 3, 1, 1)
    return {
        "pixel_values": pixels,
        "labels": torch.tensor([x["labels"] for x in good], dtype=torch.long),
        "ids": [x["ids"] for x in good],
        "num_skipped": torch.tensor(len(items) - len(good)),
    }
