"""Two real processes (DDP over gloo) through ``python -m nat_lightning``, default callbacks and
the rich progress bar on, each under a hard timeout that kills every rank."""

from __future__ import annotations

from tests.runner import QUICK, cli, load, metrics

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


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
