"""What a new user with an images/ + masks/ folder sees from ``python -m nat_lightning fit`` when
the masks do not fit the classes: ids that are no class (read in a DataLoader worker), JPEG
masks, a validation split without a labelled pixel, and a class the validation labels never
hold. Each run is a subprocess under a hard timeout, on 32-px images and one batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from tests.runner import cli, last_value, metrics

from nat_lightning.data.pairs import scanned_rows
from nat_lightning.data.segmentation import SCANNED_MASKS

TINY = ["--config", "configs/seg_quickstart.yaml", "--data.unnamed_classes", "5",
        "--data.crop_size", "32", "--data.eval_size", "32", "--data.batch_size", "8",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.max_epochs", "1"]  # fmt: skip


def write_pairs(root: Path, splits: dict[str, list[np.ndarray]], suffix: str = ".png") -> Path:
    """``images/<split>/<i>.png`` and ``masks/<split>/<i><suffix>`` ("L" masks of the ids)."""
    for split, masks in splits.items():
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for i, ids in enumerate(masks):
            image = np.stack([ids.astype(np.int64) * 50 % 256] * 3, axis=-1).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(ids.astype(np.uint8), "L").save(
                root / "masks" / split / f"{i:03d}{suffix}"
            )
    return root


def halves(left: int, right: int) -> np.ndarray:
    ids = np.full((32, 32), left, np.uint8)
    ids[:, 16:] = right
    return ids


def fit(root: Path, tmp_path: Path, *extra: str, expect: int) -> str:
    args = ["--data.dataset", str(root), "--trainer.default_root_dir", str(tmp_path / "runs")]
    return cli("fit", *TINY, *args, *extra, timeout=90, expect=expect)


def test_ids_that_are_no_class_stop_the_fit_naming_the_file_from_a_worker(tmp_path):
    """The bad mask is one setup does not read, in the first validation batch: a DataLoader
    worker meets it in the sanity check, and its error is the run's last line."""
    n = SCANNED_MASKS + 6
    unread = min(set(range(n)) - set(scanned_rows(n, SCANNED_MASKS)))
    assert unread < 8  # in the first batch
    val = [halves(i % 5, (i + 1) % 5) for i in range(n)]
    val[unread] = val[unread].copy()
    val[unread][0, :3] = (200, 9, 255)
    root = write_pairs(
        tmp_path / "data", {"train": [halves(0, 1), halves(2, 3)], "validation": val}
    )
    out = fit(root, tmp_path, "--data.num_workers", "1", expect=1)
    last = out.strip().splitlines()[-1]
    bad = root / "masks" / "validation" / f"{unread:03d}.png"
    assert last.startswith("nat_lightning.data.masks.MaskLabelError: mask file"), out[-3000:]
    assert f"{str(bad)!r} holds ids [9, 200]" in last and "5 classes" in last
    assert "unnamed_classes=201" in last and "reduce_labels" in last and "color_map" in last
    assert "DataLoader worker process 0" in out and "Target 200 is out of bounds" not in out


def test_jpeg_masks_stop_setup_saying_masks_must_be_lossless_pngs(tmp_path):
    ids = np.full((32, 32), 255, np.uint8)  # class 4 in an ignored border: JPEG blurs the edge
    ids[5:21, 7:19] = 4
    root = write_pairs(tmp_path / "data", {"train": [ids] * 2, "validation": [ids]}, suffix=".jpg")
    out = fit(root, tmp_path, expect=1)
    last = out.strip().splitlines()[-1]
    assert "000.jpg' holds ids [" in last and "the mask is a JPEG" in last, out[-3000:]
    assert "masks must be lossless PNGs" in last and "Sanity Checking" not in out


def test_a_validation_split_of_only_ignored_pixels_stops_setup_naming_it(tmp_path):
    empty = np.full((32, 32), 255, np.uint8)
    root = write_pairs(tmp_path / "data", {"train": [halves(0, 1)] * 2, "validation": [empty] * 2})
    last = fit(root, tmp_path, expect=1).strip().splitlines()[-1]
    assert "the validation split 'validation'" in last and "no labelled pixel" in last, last
    assert "every pixel of its 2 masks is 255" in last


def test_a_class_absent_from_validation_is_one_warning_and_the_fit_completes(tmp_path):
    train = [halves(0, 1), halves(2, 3), halves(4, 0)]
    root = write_pairs(
        tmp_path / "data", {"train": train, "validation": [halves(0, 1), halves(2, 3)]}
    )
    out = fit(root, tmp_path, "--trainer.max_epochs", "2", expect=0)
    assert out.count("never occur in the validation labels") == 1, out[-3000:]
    assert "1 of 5 classes never occur in the validation labels: ['class_4']" in out
    rows = metrics(tmp_path / "runs" / "version_0")
    assert [r["epoch"] for r in rows if r.get("val/miou")] == ["0", "1"]
    assert math.isfinite(last_value(rows, "val/miou")) and math.isfinite(
        last_value(rows, "val/loss")
    )
