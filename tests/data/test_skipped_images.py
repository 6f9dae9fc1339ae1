"""SkippedImagesReport (nat_lightning.callbacks.skipped_images) on a fit whose data holds corrupt
images: the exact counts are logged per stage and epoch, and warned about."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict

from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFImageDataModule

from .conftest import PLAIN, coloured


class Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 4)

    def training_step(self, batch, batch_idx):
        logits = self.layer(batch["pixel_values"].mean(dim=(2, 3)))
        return F.cross_entropy(logits, batch["labels"], ignore_index=-100, reduction="sum")

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def with_corrupt(data: Dataset, rows) -> Dataset:
    columns = data.to_dict()
    for i in rows:
        columns["img"][i] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}
    return Dataset.from_dict(columns, features=data.features)


@pytest.mark.parametrize("streaming", [False, True])
def test_corrupt_images_are_skipped_counted_and_reported(streaming):
    data = DatasetDict(
        {
            "train": with_corrupt(coloured(range(40)), [3, 17, 18]),
            "validation": with_corrupt(coloured(range(100, 111)), [5]),
        }
    )
    dm = HFImageDataModule(data, streaming=streaming, **PLAIN)
    seen = []

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            assert "num_skipped" not in batch  # popped by the DataModule after transfer
            seen.append(int((batch["labels"] >= 0).sum()))

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SkippedImagesReport(), Count()],
    )
    with pytest.warns(
        UserWarning, match=r"3 undecodable image\(s\) skipped in train \(epoch 1, all ranks\)"
    ):
        trainer.fit(Probe(), datamodule=dm)
    assert trainer.callback_metrics["data/skipped_train"] == 3  # per epoch: the count was reset
    assert trainer.callback_metrics["data/skipped_validate"] == 1
    assert sum(seen) == 2 * 37 and dm.skipped == {}
