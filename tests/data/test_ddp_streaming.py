"""Two real processes (DDP over gloo on the CPU), streaming with two workers each: every example
is trained on exactly once per epoch across ranks and workers, and the uneven split never hangs."""

import json
import signal

import lightning as L
import pytest
import torch
from datasets import Dataset

from nat_lightning import NatConfig
from nat_lightning.data import HFImageDataModule
from nat_lightning.tasks import NatClassifier

from .conftest import id_of
from .test_datamodule import NO_AUG


class RecordIds(L.Callback):
    def __init__(self, folder: str):
        self.folder, self.seen = folder, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += [id_of(p[:, 0, 0] * 255) for p, label in zip(batch["pixel_values"], batch["labels"]) if label >= 0]

    def on_train_epoch_end(self, trainer, pl_module):
        path = f"{self.folder}/rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        with open(path, "w") as f:
            json.dump(self.seen, f)
        self.seen = []


@pytest.mark.slow
def test_streaming_ddp_exactly_once_per_epoch(coloured_dataset, tmp_path):
    n = 37  # not a multiple of ranks x workers x batch size
    data = Dataset.from_dict(coloured_dataset[:n], features=coloured_dataset.features)
    dm = HFImageDataModule(data, streaming=True, val_fraction=0.1, image_size=8, crop_pct=1.0, mean=(0, 0, 0),
                           std=(1, 1, 1), batch_size=4, num_workers=2, shuffle_buffer=8, **NO_AUG)
    config = NatConfig(embed_dim=8, depths=[1], num_heads=[1], kernel_size=3, mlp_ratio=1.0)
    model = NatClassifier(model=config, num_classes=4)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[RecordIds(str(tmp_path))])
    signal.alarm(240)  # a hang fails the test instead of blocking CI
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        signal.alarm(0)
    dm.splits  # the same seeded carve-out as in the ranks
    expected = n - 4  # ceil(0.1 * 37) = 4 held out for validation, the stream's first 4
    for epoch in (0, 1):
        seen = sum((json.loads((tmp_path / f"rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1)), [])
        assert len(seen) == expected and len(set(seen)) == expected, f"epoch {epoch}: {sorted(seen)}"
        assert set(seen) == set(range(4, n))
