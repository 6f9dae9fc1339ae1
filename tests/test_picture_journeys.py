"""The pictures of a fit, the way a user gets them: ``python -m nat_lightning fit`` with the
quickstart configs in a subprocess (default callbacks, progress bar on), then the PNGs under
``<run>/pictures/`` opened and read: their size, their description and their pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tests.runner import cli

from nat_lightning.callbacks.mask_writer import palette

TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "2",
]


def opened(path) -> tuple[np.ndarray, str]:
    image = Image.open(path)
    return np.asarray(image.convert("RGB")).astype(int), image.text["Description"]


def test_a_classifier_fit_writes_a_confusion_matrix_and_labelled_samples(tmp_path):
    cli(
        "fit",
        "--config",
        "configs/quickstart.yaml",
        *TINY,
        "--trainer.default_root_dir",
        str(tmp_path),
        timeout=120,
    )
    folder = tmp_path / "version_0" / "pictures"
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion_epoch000.png",
        "samples_epoch000.png",
    ]
    confusion, description = opened(folder / "confusion_epoch000.png")
    # the embedded digits: 10 classes, 2 validation batches of 64 images
    assert description == "validation, epoch 0: confusion matrix, rows normalised, 128 images"
    h, w, _ = confusion.shape
    assert h >= 400 and w >= 400
    blue = (confusion[..., 2] > confusion[..., 0] + 40).sum()  # cells of the Blues colour map
    assert blue > 0.05 * h * w
    samples, description = opened(folder / "samples_epoch000.png")
    assert description.startswith("validation, epoch 0: 16 images, ")
    assert samples.shape[1] > 1200 and samples.shape[0] > 300  # 2 rows of 8 tiles
    assert (samples.sum(-1) < 60).mean() > 0.2  # the digits' black backgrounds
    red = (samples[..., 0] > 150) & (samples[..., 1] < 80)  # mistakes' titles, or green ones
    green = (samples[..., 1] > 100) & (samples[..., 0] < 60)
    assert red.any() or green.any()


def test_a_segmenter_fit_writes_image_truth_and_prediction_overlays(tmp_path):
    cli(
        "fit",
        "--config",
        "configs/seg_quickstart.yaml",
        *TINY,
        "--data.batch_size",
        "4",
        "--pictures.max_images",
        "6",
        "--trainer.default_root_dir",
        str(tmp_path),
        timeout=120,
    )
    (png,) = (tmp_path / "version_0" / "pictures").iterdir()
    assert png.name == "overlays_epoch000.png"
    rgb, description = opened(png)
    assert description == "validation, epoch 0: 6 images, each as image | truth | prediction"
    h, w, _ = rgb.shape
    assert w > 800 and h > 400  # 3 rows of two image | truth | prediction triplets
    assert rgb.std() > 20  # not blank
    # the legend shows the palette colour of at least the background and one shape
    colours = np.asarray(palette(), dtype=int).reshape(256, 3)[:5]
    shown = [(np.abs(rgb - c).max(-1) == 0).sum() > 20 for c in colours]
    assert sum(shown) >= 2
