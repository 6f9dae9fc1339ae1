"""Two real processes (DDP over gloo) through ``python -m nat_lightning``, default callbacks and
the rich progress bar on, each under a hard timeout that kills every rank."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch
from tests.runner import QUICK, cli, load, metrics

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
NO_VAL = ["--trainer.limit_val_batches", "0"]  # where a journey checks no validation metric


def test_a_two_process_fit_ends_its_epochs_without_a_hang_or_sync_warnings(tmp_path):
    """Was a deadlock at the first epoch end: the progress bar computed train/acc1 (an
    all-gather) on rank 0 while rank 1 was already in the skipped-images all-reduce."""
    out = cli("fit", *QUICK, *DDP, "--trainer.default_root_dir", str(tmp_path), timeout=180)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version_0"]  # both ranks, one run
    last = load(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 6  # 3 batches per rank and epoch
    assert "sync_dist" not in out
    rows = metrics(tmp_path / "version_0")
    assert [float(r["val/acc1"]) for r in rows if r.get("val/acc1")]
    assert any(r.get("val/acc_class/3") for r in rows)


class SigtermAt(L.Callback):
    """What a cluster does at preemption: SIGTERM to every process of the job, here from rank 0
    in the second batch of epoch 1 (after epoch 0's last.ckpt)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1 and trainer.global_rank == 0:
            os.killpg(os.getpgid(0), signal.SIGTERM)


def test_sigterm_stops_every_rank_writes_on_exception_once_and_resumes(tmp_path):
    out = cli(
        "fit",
        *QUICK,
        *DDP,
        *NO_VAL,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks+=tests.test_ddp_journeys.SigtermAt",
        timeout=300,
        expect=143,
    )
    folder = tmp_path / "version_0" / "checkpoints"
    stopped = load(folder / "on_exception.ckpt")
    assert stopped["epoch"] == 1 and 3 <= stopped["global_step"] <= 5, out[-3000:]
    assert out.count("on_exception.ckpt; resume with --ckpt_path last") == 1
    cli(
        "fit",
        *QUICK,
        *DDP,
        *NO_VAL,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        "last",
        timeout=180,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version_0"]
    assert load(folder / "last.ckpt")["global_step"] == 6


class SaveRankWeights(L.Callback):
    """Each rank's weights at the start and the end of fit, in the run folder."""

    def on_fit_start(self, trainer, pl_module):
        self._start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module):
        torch.save(
            {"start": self._start, "end": pl_module.state_dict()},
            f"{trainer.default_root_dir}/weights.rank{trainer.global_rank}.pt",
        )


def test_freeze_then_thaw_through_the_cli_keeps_the_ranks_identical(tmp_path):
    cli(
        "fit",
        *QUICK,
        *DDP,
        *NO_VAL,
        "--model.finetune",
        "freeze_backbone",
        "--model.unfreeze_at_epoch",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks+=tests.test_ddp_journeys.SaveRankWeights",
        timeout=180,
    )
    ranks = [
        torch.load(tmp_path / "version_0" / f"weights.rank{r}.pt", weights_only=True)
        for r in (0, 1)
    ]
    for key, value in ranks[0]["end"].items():
        assert torch.equal(value, ranks[1]["end"][key]), key  # the thawed backbone was all-reduced
    backbone = [k for k in ranks[0]["end"] if k.startswith("network.nat.") and "norm" not in k]
    assert all(not torch.equal(ranks[0]["start"][k], ranks[0]["end"][k]) for k in backbone)
