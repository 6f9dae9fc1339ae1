"""Checkpoint writes are atomic: a failed write leaves the previous file and no debris."""

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from nat_lightning.callbacks.checkpoints import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint
from nat_lightning.runs import last_checkpoint, shown


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(4)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the old checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left
    io.save_checkpoint({"step": 3}, tmp_path / "new" / "x.ckpt")
    assert torch.load(tmp_path / "new" / "x.ckpt", weights_only=True) == {"step": 3}


class LogsScores(BoringModel):
    """Logs ``val/score`` = scores[epoch]."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_validation_epoch_end(self):
        self.log("val/score", self.scores[self.current_epoch])


def test_an_epoch_whose_metric_is_nan_is_never_kept_as_best(tmp_path):
    best = BestCheckpoint(
        dirpath=tmp_path,
        monitor="val/score",
        mode="max",
        save_top_k=2,
        filename="epoch{epoch}-score{val/score:.2f}",
        auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        max_epochs=4,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[best, LastCheckpoint(dirpath=tmp_path)],
    )
    with pytest.warns(
        UserWarning, match=r"val/score=nan at epoch 0: not kept as a best checkpoint"
    ):
        trainer.fit(LogsScores([float("nan"), 0.5, float("inf"), 0.25]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch1-score0.50.ckpt",
        "epoch3-score0.25.ckpt",
        "last.ckpt",
    ]
    assert Path(best.best_model_path).name == "epoch1-score0.50.ckpt"


def test_ckpt_path_last_reads_the_step_of_each_candidate(tmp_path):
    def write(run, name, step):
        (tmp_path / run / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": step}, tmp_path / run / "checkpoints" / name)

    write("version_0", "last.ckpt", 4)
    write("version_1", "on_exception.ckpt", 0)
    write("version_1", "last.ckpt", 0)  # max_epochs=0 could write none; a stray one holds no step
    (tmp_path / "version_2").mkdir()
    (tmp_path / "version_3" / "checkpoints").mkdir(parents=True)
    (tmp_path / "version_3" / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    path, run, why = last_checkpoint(tmp_path)
    assert (path, run) == (
        tmp_path / "version_0" / "checkpoints" / "last.ckpt",
        tmp_path / "version_0",
    )
    assert why.endswith(
        "(step 4); passed over newer runs that had not trained: version_3 (last.ckpt "
        "unreadable), version_2 (no checkpoint), version_1 (last.ckpt at step 0, "
        "on_exception.ckpt at step 0)"
    )
    (tmp_path / "version_0" / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(
        ValueError, match="written after a training step .*version_0 \\(no checkpoint\\)"
    ):
        last_checkpoint(tmp_path)


def test_closing_paths_are_all_relative_or_all_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown("runs/a", tmp_path / "runs" / "b.ckpt") == ["runs/a", "runs/b.ckpt"]
    assert shown("runs/a", "/elsewhere/x") == [str(tmp_path / "runs" / "a"), "/elsewhere/x"]
