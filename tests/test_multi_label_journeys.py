"""Multi-label classification the way a user runs it: a dataset whose label column holds a list
of class names per image, fitted with the quickstart config and nothing else that says
"multi-label"; its checkpoint alone then validates with flip TTA, predicts label sets and exports
a folder transformers reads as multi-label. Cross-validation ranks its folds by val/map. Each
run is a subprocess under a hard timeout."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Image, Value
from datasets import List as ListFeature
from PIL import Image as PILImage
from tests.runner import cli, last_value, load, metrics

NAMES = ["blue", "green", "red"]  # sorted: the class ids of a list of names
FIT = ["--config", "configs/quickstart.yaml", "--trainer.max_epochs", "2",
       "--trainer.limit_train_batches", "3", "--data.image_size", "16",
       "--data.batch_size", "16"]  # fmt: skip
TIMEOUT_S = 150


def write_colour_tags(folder: Path, n: int = 96) -> tuple[Path, list[list[str]]]:
    """A parquet file of images whose colour channels that are lit are their tags (a list of
    names), and the images themselves as PNG files for predict."""
    rng = np.random.default_rng(0)
    images, tags = [], []
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        lit = [c for c in range(3) if rng.random() < 0.5]
        pixels = rng.integers(0, 40, size=(16, 16, 3), dtype=np.uint8)
        pixels[:, :, lit] += 200
        path = folder / "images" / f"{i:03d}.png"
        PILImage.fromarray(pixels).save(path)
        images.append(str(path))
        tags.append([["red", "green", "blue"][c] for c in lit])
    data = Dataset.from_dict({"image": images, "tags": tags}).cast_column("image", Image())
    assert data.features["tags"] == ListFeature(Value("string"))
    data.to_parquet(str(folder / "tags.parquet"))
    return folder / "tags.parquet", tags


@pytest.fixture(scope="module")
def multi_label_fit(tmp_path_factory) -> tuple[Path, Path, str]:
    """(the data folder, the run folder, the fit's output)"""
    folder = tmp_path_factory.mktemp("multi_label")
    parquet, _ = write_colour_tags(folder)
    out = cli("fit", *FIT, "--data.dataset", str(parquet), "--model.class_weights", "auto",
              "--trainer.default_root_dir", str(folder / "runs"), timeout=TIMEOUT_S)  # fmt: skip
    return folder, folder / "runs" / "version_0", out


def test_a_list_labelled_fit_logs_val_map_and_keeps_checkpoints_by_it(multi_label_fit):
    folder, run, out = multi_label_fit
    rows = metrics(run)
    assert np.isfinite(last_value(rows, "val/map")), out[-3000:]
    for name in ("val/f1_micro", "val/f1_macro", *[f"val/ap_class/{n}" for n in NAMES]):
        assert np.isfinite(last_value(rows, name)), name
    assert not any(r.get("val/acc1") for r in rows)
    best = [p.name for p in (run / "checkpoints").glob("epoch*.ckpt")]
    assert best and all("-map" in name for name in best), best
    state = load(run / "checkpoints" / "last.ckpt")
    assert state["hyper_parameters"]["multi_label"] is True
    assert state["hyper_parameters"]["id2label"] == dict(enumerate(NAMES))
    # class_weights=auto is a pos_weight: negatives / positives of the training split's sets
    printed = [ln for ln in out.splitlines() if ln.startswith("class_weights (auto pos_weight")]
    assert len(printed) == 1, out[-3000:]
    weights = state["state_dict"]["class_weights"].numpy()
    shown = dict(pair.split(": ") for pair in printed[0].split("positives): ")[1].split(", "))
    assert np.allclose([float(shown[n]) for n in NAMES], weights, rtol=1e-3)
    assert np.all(weights > 0.3) and np.all(weights < 3)  # each colour lit about half the time
    # the samples picture: the 10 validation images (val_fraction 0.1 of 96) titled with label
    # sets (the CLI draws pictures by default)
    picture = PILImage.open(run / "pictures" / "samples_epoch001.png")
    assert picture.text["Description"].startswith("validation, epoch 1: 10 images, ")
    rgb = np.asarray(picture.convert("RGB")).astype(int)
    lit = (rgb.max(-1) > 200) & (rgb.min(-1) < 60)  # the tiles' saturated colours
    assert lit.mean() > 0.05 and rgb.shape[1] > 900  # 2 rows of 8 tiles, then 2


def test_the_checkpoint_alone_validates_with_flip_tta_and_predicts_label_sets(
    multi_label_fit, tmp_path
):
    folder, run, _ = multi_label_fit
    ckpt = str(run / "checkpoints" / "last.ckpt")
    cli("validate", "--ckpt_path", ckpt, "--model.tta_flip", "true",
        "--trainer.default_root_dir", str(tmp_path / "val"), timeout=TIMEOUT_S)  # fmt: skip
    flipped = last_value(metrics(tmp_path / "val" / "version_0"), "val/map")
    assert 0 <= flipped <= 1
    out = cli("predict", "--ckpt_path", ckpt, "--data.predict_paths", str(folder / "images"),
              "--trainer.default_root_dir", str(tmp_path / "pred"), timeout=TIMEOUT_S)  # fmt: skip
    written = tmp_path / "pred" / "version_0" / "predictions.csv"
    assert "predict: wrote 96 row(s)" in out
    rows = list(csv.DictReader(written.open()))
    assert list(rows[0]) == ["id", "labels", *[f"score_{n}" for n in NAMES], "error"]
    for row in rows:  # the set is the classes at or above the threshold, most probable first
        scores = {n: float(row[f"score_{n}"]) for n in NAMES}
        expected = sorted((n for n in NAMES if scores[n] >= 0.5), key=lambda n: -scores[n])
        assert row["labels"] == ";".join(expected)


def test_the_export_says_multi_label_to_transformers(multi_label_fit, tmp_path):
    _, run, _ = multi_label_fit
    cli("export", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        "--output", str(tmp_path / "exported"), timeout=TIMEOUT_S)  # fmt: skip
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {str(i): n for i, n in enumerate(NAMES)}


def test_a_list_of_several_classes_stops_a_single_label_fit_naming_the_fix(tmp_path):
    """``--data.label_sets false`` reads each list as one class: a list of two stops the fit."""
    parquet, tags = write_colour_tags(tmp_path, n=24)
    out = cli("fit", *FIT, "--data.dataset", str(parquet), "--data.label_sets", "false",
              "--trainer.default_root_dir", str(tmp_path / "runs"), timeout=TIMEOUT_S,
              expect=1)  # fmt: skip
    assert "expected exactly one class per image" in out.strip().splitlines()[-1]


def test_cross_validation_of_multi_label_data_ranks_folds_by_val_map(tmp_path):
    parquet, _ = write_colour_tags(tmp_path, n=48)
    cli("cross_validate", "--folds", "3", *FIT, "--data.dataset", str(parquet),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path / "cv"), timeout=300)  # fmt: skip
    run = tmp_path / "cv" / "version_0"
    summary = json.loads((run / "cv_summary.json").read_text())
    best = [
        max(
            float(r["val/map"])
            for r in metrics(run / f"fold_{i}" / "version_0")
            if r.get("val/map")
        )
        for i in range(3)
    ]
    assert summary["monitor"] == "val/map"
    assert list(summary["folds"].values()) == pytest.approx(best)
    assert summary["mean"] == pytest.approx(statistics.fmean(best))
