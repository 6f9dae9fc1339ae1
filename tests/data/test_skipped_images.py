"""SkippedImagesReport (nat_lightning.callbacks.skipped_images) on runs whose data holds corrupt
images: 0-row batches for undecodable ones, exact counts logged per stage and epoch and warned
about, and the run stopped, naming the files, past ``max_skipped_fraction``."""

import ast

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict

from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFImageDataModule

from .conftest import PLAIN, coloured, quiet_trainer, write_images


class Probe(L.LightningModule):
    """Trains a linear layer on mean colours; counts the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 4)
        self.trained_batches = 0

    def training_step(self, batch, batch_idx):
        if not len(batch["labels"]):
            return None  # only undecodable images: nothing to learn, the step is skipped
        self.trained_batches += 1
        logits = self.layer(batch["pixel_values"].mean(dim=(2, 3)))
        return F.cross_entropy(logits, batch["labels"], ignore_index=-100, reduction="sum")

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(**overrides) -> L.Trainer:
    return quiet_trainer(**{"callbacks": [SkippedImagesReport()], **overrides})


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
            assert not {"num_examples", "num_skipped", "skipped_names"} & set(batch)  # popped
            seen.append(int((batch["labels"] >= 0).sum()))

    run = trainer(max_epochs=2, callbacks=[SkippedImagesReport(), Count()])
    with pytest.warns(UserWarning) as warned:
        run.fit(Probe(), datamodule=dm)
    lines = [str(w.message) for w in warned if "could not be decoded" in str(w.message)]
    assert [line.split(", e.g. ")[0] for line in lines] == [  # one line per stage, at fit's end
        f"{n} image(s) in {stage} (epochs 0-1, summed, all ranks) could not be decoded and "
        "were skipped"
        for n, stage in (("6 of 80", "train"), ("2 of 22", "validate"))
    ]
    if not streaming:  # streamed rows have neither a path nor a row index
        names = [sorted(ast.literal_eval(line.split(", e.g. ")[1])) for line in lines]
        assert names == [["row 17", "row 18", "row 3"], ["row 5"]]  # each once, though read twice
    assert run.callback_metrics["data/skipped_train"] == 3  # per epoch: the count was reset
    assert run.callback_metrics["data/skipped_validate"] == 1
    assert sum(seen) == 2 * 37 and dm.tallies == {}


def broken_folder(root, kind: str, good: int = 0) -> tuple[list[str], list[str]]:
    """train/{cat,dog}/i.png, 5 each: the first ``good`` of each class decode (colours i and
    50 + i), the others are ``kind``. (paths of the good files, paths of the broken ones)."""
    files = {
        f"train/{name}/{i}.png": base + i if i < good else kind
        for name, base in (("cat", 0), ("dog", 50))
        for i in range(5)
    }
    paths = write_images(root, files)
    return [p for p, v in zip(paths, files.values()) if v != kind], [
        p for p, v in zip(paths, files.values()) if v == kind
    ]


@pytest.mark.parametrize("kind", ["truncated", "zero-byte"])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_folder_of_broken_pngs_gives_empty_batches(tmp_path, kind, streaming):
    _, broken = broken_folder(tmp_path / "bad", kind)
    dm = HFImageDataModule(
        str(tmp_path / "bad"), val_split=None, streaming=streaming, **{**PLAIN, "batch_size": 4}
    )
    dm.setup("fit")
    batches = [b for b in dm.train_dataloader() if b["num_examples"]]  # streaming pads after
    assert [b["num_skipped"] for b in batches] == [b["num_examples"] for b in batches] == [4, 4, 2]
    assert all(b["pixel_values"].shape == (0, 3, 8, 8) for b in batches)
    assert all(b["labels"].shape == (0,) for b in batches)
    assert sorted(name for b in batches for name in b["skipped_names"]) == sorted(broken)


def test_too_many_undecodable_images_stop_the_run_naming_them(tmp_path):
    _, broken = broken_folder(tmp_path / "data", "truncated", good=2)  # 6 of 10 broken
    dm = HFImageDataModule(str(tmp_path / "data"), val_split=None, **PLAIN)
    with pytest.raises(
        ValueError,
        match=r"6 of 10 images in train \(epoch 0, all ranks\) could not be decoded \(the first "
        r"10 per rank: .*\): more than max_skipped_fraction=0.5 of them",
    ) as error:
        trainer().fit(Probe(), datamodule=dm)
    assert all(repr(path) in str(error.value) for path in broken)
    probe = Probe()  # 6 <= 0.6 * 10: warned, not stopped
    settings = {**PLAIN, "batch_size": 10, "max_skipped_fraction": 0.6}
    dm = HFImageDataModule(str(tmp_path / "data"), val_split=None, **settings)
    with pytest.warns(UserWarning, match=r"6 of 10 image\(s\) in train .*could not be decoded"):
        trainer().fit(probe, datamodule=dm)
    assert probe.trained_batches == 1  # one batch: the 4 good images


def test_the_sanity_check_neither_stops_nor_counts_a_broken_validation_set(tmp_path):
    write_images(tmp_path / "data", {"train/a/0.png": 1, "train/b/0.png": 2})
    write_images(tmp_path / "data", {"validation/a/0.png": "zero-byte", "validation/b/0.png": 3})
    write_images(tmp_path / "data", {"validation/a/1.png": "truncated"})
    dm = HFImageDataModule(str(tmp_path / "data"), **PLAIN)
    probe = Probe()
    with pytest.raises(ValueError, match=r"2 of 3 images in validate \(epoch 0, all ranks\)"):
        trainer(num_sanity_val_steps=2).fit(probe, datamodule=dm)
    assert probe.trained_batches == 1  # the sanity check let training start
    with pytest.raises(ValueError, match=r"2 of 3 images in validate \(epoch 0"):
        trainer().validate(Probe(), datamodule=dm)
    dm = HFImageDataModule(str(tmp_path / "data"), max_skipped_fraction=0.7, **PLAIN)
    trainer().validate(Probe(), datamodule=dm)  # 2 <= 0.7 * 3
    assert dm.tallies == {}
