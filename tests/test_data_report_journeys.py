"""What ``python -m nat_lightning fit`` tells a user about an image folder it cannot use as it
stands: a layout without class labels stops with the folders found and their depths; an empty
class folder and a truncated training image each get one line at the end of the fit, which
completes. One fit serves both lines; each run is a subprocess under a hard timeout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.runner import QUICK, last_value, load, metrics, offline_env, run_module

TIMEOUT_S = 60


def fit(tmp_path: Path, data: Path, expect: int) -> str:
    returncode, out = run_module(
        "nat_lightning", "fit", *QUICK, "--trainer.max_epochs", "1", "--data.dataset", str(data),
        "--data.batch_size", "4", "--trainer.default_root_dir", str(tmp_path / "runs"),
        timeout=TIMEOUT_S, env=offline_env(tmp_path),
    )  # fmt: skip
    assert returncode == expect, f"exit {returncode} (expected {expect}):\n{out[-6000:]}"
    return out


def write(folder: Path, names: list[str]) -> None:
    """8 px JPEGs, reddish in cats/, greenish in dogs/."""
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
        pixels[..., 0 if "cats" in name else 1] += 180
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name, format="JPEG")


@pytest.fixture(scope="module")
def flawed_fit(tmp_path_factory) -> tuple[Path, Path, str]:
    """train/{cats,dogs}/ with 6 JPEGs each, one of them cut in half, and an empty train/zebra/;
    validation/{cats,dogs}/ with 2 each. (the data, the run, the fit's output)"""
    tmp_path = tmp_path_factory.mktemp("flawed")
    data = tmp_path / "pets"
    write(data, [f"train/{c}/{i}.jpg" for c in ("cats", "dogs") for i in range(6)])
    write(data, [f"validation/{c}/{i}.jpg" for c in ("cats", "dogs") for i in range(2)])
    (data / "train" / "zebra").mkdir()
    cut = data / "train" / "dogs" / "3.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return data, tmp_path / "runs" / "version_0", fit(tmp_path, data, expect=0)


def lines_with(out: str, text: str) -> list[str]:
    return [line for line in out.splitlines() if text in line]


def after_training(out: str, line: str) -> bool:
    """The line comes after Lightning's 'Trainer.fit stopped' and before our 'fit finished'."""
    lines = out.splitlines()
    stopped = next(i for i, x in enumerate(lines) if "`Trainer.fit` stopped" in x)
    finished = next(i for i, x in enumerate(lines) if x.startswith("fit finished"))
    return stopped < lines.index(line) < finished


def test_a_truncated_training_image_is_one_line_naming_it(flawed_fit):
    data, run, out = flawed_fit
    skipped = lines_with(out, "could not be decoded")
    assert len(skipped) == 1, out[-4000:]
    path = str(data / "train" / "dogs" / "3.jpg")
    assert skipped[0].endswith(
        f"1 of 12 image(s) in train (epoch 0, all ranks) could not be decoded and were "
        f"skipped: [{path!r}]"
    )
    assert after_training(out, skipped[0])
    assert last_value(metrics(run), "data/skipped_train") == 1


def test_an_empty_class_folder_is_one_line_saying_it_is_no_class(flawed_fit):
    data, run, out = flawed_fit
    empty = lines_with(out, "'train/zebra'")
    assert len(empty) == 1, out[-4000:]
    assert empty[0].endswith(
        f"image folder {str(data)!r}: 1 empty folder(s) are not classes: 'train/zebra' "
        "(imagefolder makes classes only of the folders that hold images; the 2 classes: "
        "cats, dogs)"
    )
    assert after_training(out, empty[0])
    assert load(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["id2label"] == {
        0: "cats",
        1: "dogs",
    }


def test_a_mixed_nesting_folder_stops_listing_its_folders_and_depths(tmp_path):
    data = tmp_path / "pets"
    write(data, ["train/cats/0.jpg", "train/cats/1.jpg", "train/nested/dogs/0.jpg"])
    out = fit(tmp_path, data, expect=1)
    assert "is an image folder without class labels: its images lie at 2 different depths" in out
    assert "'train/cats' (depth 2): 2 image(s), 'train/nested/dogs' (depth 3): 1 image(s)" in out
    assert "Expected one subfolder per class" in out
    assert not (tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt").exists()
