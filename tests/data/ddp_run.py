"""Run by test_ddp.py as ``python -m tests.data.ddp_run OUT_DIR [broken]``: two DDP processes (gloo
on the CPU) train and validate on a streamed dataset whose size divides by neither the ranks, the
workers nor the batch size. Each rank writes, per epoch, the example ids it trained and validated
on. With ``broken``, most training images (map-style, so named by row) do not decode, and
SkippedImagesReport stops the run on every rank.

strategy="ddp" starts each rank as a fresh ``python -m`` process, whose DataLoader workers fork;
under "ddp_spawn" the workers would be spawned too and re-import torch, costing ~40 s here."""

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from tests.data.conftest import PLAIN, coloured, ids_in

from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFImageDataModule

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

    def training_step(self, batch, batch_idx):
        ids = ids_in(batch)
        self.record["train"] += ids
        self.record["order"] += ids
        self.record["train_batches"] += 1
        self.record["padding_batches"] += int(not ids)
        logits = self.layer(batch["pixel_values"].mean(dim=(2, 3)))
        real = (batch["labels"] >= 0).sum().clamp(min=1)
        return (
            F.cross_entropy(logits, batch["labels"], ignore_index=-100, reduction="sum") / real
        )  # grads all-reduced

    def validation_step(self, batch, batch_idx):
        self.record["val"] += ids_in(batch)
        self.log(
            "val/examples", float(len(batch["labels"])), sync_dist=True, reduce_fx="sum"
        )  # a collective per step

    def on_train_epoch_end(self):
        path = Path(self.out) / f"rank{self.global_rank}-epoch{self.current_epoch}.json"
        path.write_text(json.dumps(self.record))
        self.record = self._empty()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out: str, broken: bool = False) -> None:
    train = coloured(TRAIN)
    if broken:
        rows = train.to_dict()
        for i in BROKEN:
            rows["img"][i] = {"bytes": b"not an image", "path": None}
        train = Dataset.from_dict(rows, features=train.features)
    data = DatasetDict({"train": train, "validation": coloured(VAL)})
    dm = HFImageDataModule(
        data,
        streaming=not broken,
        shuffle_buffer=8,
        **{**PLAIN, "batch_size": 4, "num_workers": 2},
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
    trainer.fit(Recorder(out), datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], broken=sys.argv[2:] == ["broken"])
