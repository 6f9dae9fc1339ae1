"""Class imbalance and test-time augmentation the way a user runs them: a quickstart fit with
``--model.class_weights auto`` and ``--data.sampler balanced`` prints the weights and trains; its
checkpoint validates with ``--model.tta_flip true``; weights of the wrong length stop the fit
naming the field. Each run is a subprocess under a hard timeout; one fit serves them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.runner import cli, last_value, load, metrics

from nat_lightning.data import HFImageDataModule

TINY_FIT = ["--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]  # fmt: skip
TIMEOUT_S = 60


def newest_run(root: Path) -> Path:
    return max(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.fixture(scope="module")
def weighted_fit(tmp_path_factory) -> tuple[Path, str]:
    """(the run folder, the fit's output)"""
    root = tmp_path_factory.mktemp("imbalance") / "runs"
    out = cli("fit", *TINY_FIT, "--model.class_weights", "auto", "--data.sampler", "balanced",
              "--trainer.default_root_dir", str(root), timeout=TIMEOUT_S)  # fmt: skip
    return newest_run(root), out


def test_a_weighted_balanced_fit_prints_its_weights_and_trains(weighted_fit):
    run, out = weighted_fit
    # the config's training split (the digits less the seeded val_fraction), as the fit reads it
    labels = np.asarray(HFImageDataModule.embedded().splits["train"].data["label"])
    counts = np.bincount(labels, minlength=10)
    expected = counts.sum() / (10 * counts)  # sklearn's "balanced"
    printed = [line for line in out.splitlines() if line.startswith("class_weights (auto")]
    assert len(printed) == 1, out[-3000:]
    shown = dict(pair.split(": ") for pair in printed[0].split("counts): ")[1].split(", "))
    assert np.allclose([float(shown[str(c)]) for c in range(10)], expected, rtol=1e-3)
    rows = metrics(run)
    assert np.isfinite(last_value(rows, "train/acc1")) and last_value(rows, "step") == 1  # 2 steps
    state = load(run / "checkpoints" / "last.ckpt")
    assert np.allclose(state["state_dict"]["class_weights"].numpy(), expected, rtol=1e-5)
    assert state["hyper_parameters"]["class_weights"] == "auto"


def test_the_checkpoint_validates_with_flip_tta(weighted_fit, tmp_path):
    """The fit's last validation ran on last.ckpt's weights and the same 2 batches, without TTA."""
    run, _ = weighted_fit
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = cli("validate", "--ckpt_path", ckpt, "--model.tta_flip", "true", "--trainer.limit_val_batches",
              "2", "--trainer.default_root_dir", str(tmp_path), timeout=TIMEOUT_S)  # fmt: skip
    validated = newest_run(tmp_path)
    assert "tta_flip: true" in (validated / "config.yaml").read_text(), out[-3000:]
    flipped, plain = (last_value(metrics(r), "val/loss") for r in (validated, run))
    assert np.isfinite(flipped) and flipped != plain  # the mirrored views were averaged in


def test_weights_of_the_wrong_length_stop_the_fit_naming_the_field(tmp_path):
    out = cli("fit", *TINY_FIT, "--model.class_weights", "[1.0, 2.0]", "--trainer.default_root_dir",
              str(tmp_path), expect=1, timeout=TIMEOUT_S)  # fmt: skip
    assert "class_weights has 2 weights but the model has 10 classes (['0', '1'" in out
