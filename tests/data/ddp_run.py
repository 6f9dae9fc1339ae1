"""Run by test_ddp.py as ``python -m tests.data.ddp_run OUT_DIR [MODE]``: two DDP processes (gloo
on the CPU) train and validate on a streamed dataset whose size divides by neither the ranks, the
workers nor the batch size. Each rank writes, per epoch, the example ids it trained and validated
on. With ``broken``, most training images (map-style, so named by row) do not decode, and
SkippedImagesReport stops the run on every rank; ``tolerated``, the same with
max_skipped_fraction=1, runs to the end. With ``segmentation``, the same run on
image-mask pairs through HFSegmentationDataModule.

strategy="ddp" starts each rank as a fresh ``python -m`` process, whose DataLoader workers fork;
under "ddp_spawn" the workers would be spawned too and re-import torch, costing ~40 s here."""

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from tests.data.conftest import PLAIN, blocks, coloured, ids_in, pairs

from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFImageDataModule, HFSegmentationDataModule

TRAIN, VAL = range(45), range(100, 113)
BROKEN = [i for i in TRAIN if i % 4]  # broken mode: 33 of the 45 training images do not decode


class Recorder(L.LightningModule):
    def __init__(self, out: str):
        super().__init__()
        self.out = out
        self.layer = torch.nn.Linear(3, 4)
        self.record = self._empty()

    @staticmethod
    def _empty() -> dict:
        return {"train": [], "val": [], "train_batches": 0, "padding_batches": 0, "order": []}

    def ids(self, batch) -> list[int]:
        return ids_in(batch)

    def loss(self, batch) -> torch.Tensor:
        logits = self.layer(batch["pixel_values"].mean(dim=(2, 3)))
        real = (batch["labels"] >= 0).sum().clamp(min=1)
        return (
            F.cross_entropy(logits, batch["labels"], ignore_index=-100, reduction="sum") / real
        )  # grads all-reduced

    def training_step(self, batch, batch_idx):
        ids = self.ids(batch)
        self.record["train"] += ids
        self.record["order"] += ids
        self.record["train_batches"] += 1
        self.record["padding_batches"] += int(not ids)
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.record["val"] += self.ids(batch)
        self.log(
            "val/examples", float(len(batch["labels"])), sync_dist=True, reduce_fx="sum"
        )  # a collective per step

    def on_train_epoch_end(self):
        path = Path(self.out) / f"rank{self.global_rank}-epoch{self.current_epoch}.json"
        path.write_text(json.dumps(self.record))
        self.record = self._empty()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SegmentationRecorder(Recorder):
    """The same records for image-mask pairs: pair i is known by its mask, blocks(i)."""

    def __init__(self, out: str):
        super().__init__(out)
        self.layer = torch.nn.Conv2d(3, 5, 1)  # every parameter gets a gradient, as DDP expects
        self.by_mask = {blocks(i).tobytes(): i for i in [*TRAIN, *VAL]}

    def ids(self, batch) -> list[int]:
        masks = [m.to(torch.uint8).numpy().tobytes() for m in batch["labels"] if (m != 255).any()]
        return [self.by_mask[m] for m in masks]  # padding batches: labels 255 only

    def loss(self, batch) -> torch.Tensor:
        logits = self.layer(batch["pixel_values"])
        real = (batch["labels"] != 255).sum().clamp(min=1)
        return F.cross_entropy(logits, batch["labels"], ignore_index=255, reduction="sum") / real


def segmentation_data() -> HFSegmentationDataModule:
    data = DatasetDict(
        {"train": pairs([blocks(i) for i in TRAIN]), "validation": pairs([blocks(i) for i in VAL])}
    )
    plain = {"crop_size": 32, "scale_range": (1.0, 1.0), "hflip": 0.0, "cat_max_ratio": 1.0,
             "photometric_distortion": False, "batch_size": 4, "num_workers": 2}  # fmt: skip
    return HFSegmentationDataModule(data, streaming=True, shuffle_buffer=8, **plain)


def main(out: str, broken: bool = False, segmentation: bool = False, limit: float = 0.5) -> None:
    train = coloured(TRAIN)
    if broken:
        rows = train.to_dict()
        for i in BROKEN:
            rows["img"][i] = {"bytes": b"not an image", "path": None}
        train = Dataset.from_dict(rows, features=train.features)
    data = DatasetDict({"train": train, "validation": coloured(VAL)})
    dm = (
        segmentation_data()
        if segmentation
        else HFImageDataModule(
            data,
            streaming=not broken,
            shuffle_buffer=8,
            max_skipped_fraction=limit,
            **{**PLAIN, "batch_size": 4, "num_workers": 2},
        )
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[SkippedImagesReport()] if broken else [],
    )
    trainer.fit((SegmentationRecorder if segmentation else Recorder)(out), datamodule=dm)


if __name__ == "__main__":
    mode = sys.argv[2:]
    broken = mode in (["broken"], ["tolerated"])  # tolerated: broken, max_skipped_fraction=1
    limit = 1.0 if mode == ["tolerated"] else 0.5
    main(sys.argv[1], broken=broken, segmentation=mode == ["segmentation"], limit=limit)
