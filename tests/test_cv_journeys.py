"""Cross-validation as a user runs it: ``python -m nat_lightning cross_validate --folds 3 ...``."""

from __future__ import annotations

import json
import statistics

import pytest
from tests.runner import QUICK, cli, load, metrics


def test_three_folds_fit_and_summarise_their_best_metric(tmp_path):
    out = cli(
        "cross_validate",
        "--folds",
        "3",
        *QUICK,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--data.image_size",
        "16",
        "--trainer.default_root_dir",
        str(tmp_path),
        timeout=300,
    )
    run = tmp_path / "version_0"
    summary = json.loads((run / "cv_summary.json").read_text())
    # the oracle: each fold's own metrics.csv, read here
    best = [
        max(
            float(r["val/acc1"])
            for r in metrics(run / f"fold_{i}" / "version_0")
            if r.get("val/acc1")
        )
        for i in range(3)
    ]
    assert summary["monitor"] == "val/acc1"
    assert list(summary["folds"].values()) == pytest.approx(best)
    assert summary["mean"] == pytest.approx(statistics.fmean(best))
    assert summary["std"] == pytest.approx(statistics.stdev(best))
    for i in range(3):
        data = load(run / f"fold_{i}" / "version_0" / "checkpoints" / "last.ckpt")[
            "datamodule_hyper_parameters"
        ]
        assert (data["folds"], data["fold"]) == (3, i)
    assert f"over 3 folds; summary {run / 'cv_summary.json'}" in out
    csv_rows = (run / "cv_summary.csv").read_text().splitlines()
    assert csv_rows[0] == "fold,val/acc1" and [r.split(",")[0] for r in csv_rows[1:]] == [
        "fold_0",
        "fold_1",
        "fold_2",
        "mean",
        "std",
    ]


def test_a_fold_that_does_not_exist_is_refused(tmp_path):
    out = cli(
        "fit",
        *QUICK,
        "--data.folds",
        "3",
        "--data.fold",
        "3",
        "--trainer.default_root_dir",
        str(tmp_path),
        expect=1,
    )
    assert (
        "folds=3, fold=3: expected folds >= 2 and 0 <= fold < folds" in out.strip().splitlines()[-1]
    )
    out = cli("cross_validate", "--folds", "1", *QUICK, expect=1)
    assert "cross_validate needs --folds K with K >= 2 (got 1)" in out
