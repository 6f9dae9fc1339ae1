"""ValidationPictures: figures rendered from known inputs, checked pixel by pixel; the callback's
choice of images (mistakes first), its files, their pruning and the loggers that get them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from nat_lightning.callbacks.mask_writer import palette
from nat_lightning.callbacks.pictures import (
    NEUTRAL,
    RIGHT,
    WRONG,
    ValidationPictures,
    confusion_figure,
    figure_rgb,
    log_picture,
    most_confused,
    overlays_figure,
    prune,
    samples_figure,
)

MEAN_STD = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def pixel_at(rgb: np.ndarray, ax, x: float, y: float) -> np.ndarray:
    """The rendered colour at data point (x, y) of ``ax`` (display y runs upwards)."""
    px, py = ax.transData.transform((x, y))
    return rgb[int(rgb.shape[0] - py), int(px)].astype(int)


def tile_centre(rgb: np.ndarray, ax) -> np.ndarray:
    box = ax.get_window_extent()
    return rgb[int(rgb.shape[0] - (box.y0 + box.y1) / 2), int((box.x0 + box.x1) / 2)].astype(int)


def solid(colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (12, 12, 3)).copy()


def test_the_confusion_matrix_shows_each_row_normalised_in_its_cell_colour():
    counts = np.array([[8, 2, 0], [0, 10, 0], [5, 0, 5]])
    names = {0: "cat", 1: "dog", 2: "bird"}
    figure, description = confusion_figure(
        counts, names, max_classes=20, where="validation, epoch 3"
    )
    rgb = figure_rgb(figure)
    ax = figure.axes[0]
    blues = colormaps["Blues"]
    expected = counts / counts.sum(1, keepdims=True)
    for (i, j), value in np.ndenumerate(expected):
        colour = np.round(np.asarray(blues(value)[:3]) * 255)
        # a corner of the cell, away from its printed value
        assert np.abs(pixel_at(rgb, ax, j - 0.35, i - 0.35) - colour).max() <= 2, (i, j)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "bird"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert description == "validation, epoch 3: confusion matrix, rows normalised, 30 images"


def test_with_many_classes_the_matrix_shows_the_most_confused_ones():
    counts = np.diag(np.full(30, 10))
    counts[4, 17] = counts[17, 4] = 3  # 4 <-> 17 confused
    counts[25, 9] = 1
    assert most_confused(counts, 3)[:1] == [4] and set(most_confused(counts, 3)) >= {4, 17}
    assert most_confused(counts, 30) == list(range(30))
    figure, description = confusion_figure(counts, {}, max_classes=3, where="v")
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert len(labels) == 3 and {"4", "17"} <= set(labels)
    assert "the 3 most-confused of 30 classes" in description


def test_the_samples_grid_shows_each_image_titled_red_for_a_mistake():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    samples = [(solid(c), k % 3, 0, 0.9) for k, c in enumerate(colours)]  # 0 and 3 right
    figure, description = samples_figure(samples, {0: "zero", 1: "one", 2: "two"}, "v")
    rgb = figure_rgb(figure)
    assert len(figure.axes) == 5 and description == "v: 5 images, 3 mistakes first"
    for ax, colour, (_, label, _, _) in zip(figure.axes, colours, samples):
        assert tile_centre(rgb, ax).tolist() == list(colour)
        title = ax.title
        assert title.get_color() == (RIGHT if label == 0 else WRONG)
        assert title.get_text().startswith(f"true {['zero', 'one', 'two'][label]}\npred zero")


def test_the_overlays_grid_blends_class_colours_and_shows_ignored_pixels_grey():
    image = solid((200, 100, 0))[:8, :8]
    truth = torch.full((8, 8), 255, dtype=torch.long)
    truth[:, :4] = 1
    pred = torch.full((8, 8), 2, dtype=torch.long)
    figure, description = overlays_figure([(image, truth, pred)] * 2, {1: "a", 2: "b"}, 0.5, "v")
    rgb = figure_rgb(figure)
    assert (
        len(figure.axes) == 6 and description == "v: 2 images, each as image | truth | prediction"
    )
    colours = np.asarray(palette(), dtype=float).reshape(256, 3)

    def blend(c):
        return np.round(0.5 * np.asarray(image[0, 0], float) + 0.5 * np.asarray(c, float))

    image_ax, truth_ax, pred_ax = figure.axes[:3]
    assert tile_centre(rgb, image_ax).tolist() == [200, 100, 0]
    assert np.abs(pixel_at(rgb, truth_ax, 1.5, 4) - blend(colours[1])).max() <= 1
    assert np.abs(pixel_at(rgb, truth_ax, 6.5, 4) - blend(NEUTRAL)).max() <= 1  # ignored
    assert np.abs(pixel_at(rgb, pred_ax, 4, 4) - blend(colours[2])).max() <= 1
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["a", "b", "ignored"]


def fakes(tmp_path: Path, pictures: str, num_classes: int = 3, epoch: int = 2, **trainer):
    settings = {
        "sanity_checking": False,
        "current_epoch": epoch,
        "is_global_zero": True,
        "default_root_dir": str(tmp_path),
        "datamodule": None,
        "loggers": [],
        "global_step": 7,
    }
    module = SimpleNamespace(
        pictures=pictures,
        num_classes=num_classes,
        device=torch.device("cpu"),
        id2label={i: f"c{i}" for i in range(num_classes)},
        preprocessing=MEAN_STD,
    )
    return SimpleNamespace(**{**settings, **trainer}), module


def validate(callback, trainer, module, batches) -> None:
    callback.on_validation_epoch_start(trainer, module)
    for k, (outputs, batch) in enumerate(batches):
        callback.on_validation_batch_end(trainer, module, outputs, batch, k)
    callback.on_validation_epoch_end(trainer, module)


def classification_batch(labels: list[int], preds: list[int], shade: list[float]):
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 3).float() * 4
    pixels = torch.tensor(shade).view(-1, 1, 1, 1).expand(-1, 3, 6, 6) * 2 - 1  # normalised
    return {"logits": logits, "labels": torch.tensor(labels)}, {"pixel_values": pixels}


def test_the_callback_writes_the_confusion_and_mistakes_first(tmp_path):
    trainer, module = fakes(tmp_path, "classes")
    batches = [
        classification_batch([0, 1, -100], [0, 2, 1], [0.1, 0.2, 0.3]),
        classification_batch([2, 2, 1], [2, 0, 1], [0.4, 0.5, 0.6]),
    ]
    validate(ValidationPictures(max_images=3), trainer, module, batches)
    folder = tmp_path / "pictures"
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion_epoch002.png",
        "samples_epoch002.png",
    ]
    counts = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1]])  # the padding row (-100) not counted
    confusion = confusion_figure(counts, module.id2label, 20, "validation, epoch 2")
    written = Image.open(folder / "confusion_epoch002.png")
    assert np.array_equal(np.asarray(written.convert("RGB")), figure_rgb(confusion[0]))
    assert written.text["Description"] == confusion[1]
    # 2 mistakes (images 0.2 and 0.5), then the first correct one (0.1); grey levels of 255 * shade
    grey = [solid([round(255 * s)] * 3) for s in (0.2, 0.5, 0.1)]
    samples = [(grey[0], 1, 2, 0), (grey[1], 2, 0, 0), (grey[2], 0, 0, 0)]
    expected, description = samples_figure(samples, module.id2label, "validation, epoch 2")
    samples_png = Image.open(folder / "samples_epoch002.png")
    assert (
        description
        == "validation, epoch 2: 3 images, 2 mistakes first"
        == samples_png.text["Description"]
    )
    rgb = np.asarray(samples_png.convert("RGB"))
    figure_rgb(expected)
    for ax, (image, *_) in zip(expected.axes, samples):
        assert np.abs(tile_centre(rgb, ax) - image[0, 0]).max() <= 1


def test_a_multi_label_callback_titles_samples_with_sets_largest_error_first(tmp_path):
    trainer, module = fakes(tmp_path, "label_sets")
    module.hparams = SimpleNamespace(threshold=0.5)
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.1, 0.1], [0.8, 0.7, 0.1], [0.5, 0.5, 0.5]])
    labels = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 0], [-100, -100, -100]])
    pixels = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(-1, 1, 1, 1).expand(-1, 3, 6, 6) * 2 - 1
    outputs = {"logits": torch.logit(probs), "labels": labels}
    validate(
        ValidationPictures(max_images=3), trainer, module, [(outputs, {"pixel_values": pixels})]
    )
    written = Image.open(tmp_path / "pictures" / "samples_epoch002.png")
    # mistakes: row 1 (c0 missed, error 0.7), row 2 (c1 extra, error 0.7); then row 0, right;
    # the padding row is no sample
    grey = [solid([round(255 * s)] * 3) for s in (0.2, 0.3, 0.1)]
    samples = [
        (grey[0], (0,), (), 0.7),
        (grey[1], (0,), (0, 1), 0.7),
        (grey[2], (0, 2), (0, 2), 0.4),
    ]
    expected, description = samples_figure(samples, module.id2label, "validation, epoch 2")
    assert (
        written.text["Description"]
        == description
        == "validation, epoch 2: 3 images, 2 mistakes first"
    )
    titles = [ax.title.get_text() for ax in expected.axes]
    assert titles == ["true c0\npred none", "true c0\npred c0, c1", "true c0, c2\npred c0, c2"]
    assert [ax.title.get_color() for ax in expected.axes] == [WRONG, WRONG, RIGHT]
    rgb = np.asarray(written.convert("RGB"))
    figure_rgb(expected)
    for ax, (image, *_) in zip(expected.axes, samples):
        assert np.abs(tile_centre(rgb, ax) - image[0, 0]).max() <= 1


def test_the_callback_draws_a_segmenters_overlays_cropped_to_content(tmp_path):
    trainer, module = fakes(tmp_path, "masks", num_classes=2)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :, 6:] = 255  # padding
    outputs = {"masks": torch.ones(2, 8, 8, dtype=torch.long), "labels": labels}
    batch = {"pixel_values": torch.zeros(2, 3, 8, 8), "content": torch.tensor([[8, 6], [8, 6]])}
    validate(ValidationPictures(max_images=3), trainer, module, [(outputs, batch)] * 2)
    (png,) = (tmp_path / "pictures").iterdir()
    assert png.name == "overlays_epoch002.png"
    assert Image.open(png).text["Description"] == (
        "validation, epoch 2: 3 images, each as image | truth | prediction"
    )
    callback = ValidationPictures()
    callback.on_validation_epoch_start(trainer, module)
    callback.on_validation_batch_end(trainer, module, outputs, batch, 0)
    assert [tuple(row[0].shape) for row in callback._rows] == [(8, 6, 3)] * 2  # padding cropped
    assert all(255 not in row[1] for row in callback._rows)


@pytest.mark.parametrize(
    ("settings", "callback"),
    [
        ({"sanity_checking": True}, ValidationPictures()),
        ({"current_epoch": 0}, ValidationPictures(every_n_epochs=2)),
        ({}, ValidationPictures(every_n_epochs=0)),
        ({"is_global_zero": False}, ValidationPictures()),
    ],
)
def test_no_pictures_in_the_sanity_check_off_epochs_when_off_or_off_rank_zero(
    tmp_path, settings, callback
):
    trainer, module = fakes(tmp_path, "classes", **settings)
    validate(callback, trainer, module, [classification_batch([0], [1], [0.5])])
    assert not (tmp_path / "pictures").exists()


def test_a_task_without_pictures_gets_none(tmp_path):
    trainer, module = fakes(tmp_path, None)
    validate(ValidationPictures(), trainer, module, [classification_batch([0], [1], [0.5])])
    assert not (tmp_path / "pictures").exists()


def test_only_the_newest_epochs_are_kept(tmp_path):
    for epoch in (1, 2, 10, 100):
        (tmp_path / f"samples_epoch{epoch:03d}.png").touch()
    (tmp_path / "confusion_epoch001.png").touch()
    prune(tmp_path, "samples", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_epoch001.png",
        "samples_epoch010.png",
        "samples_epoch100.png",
    ]


def test_each_logger_gets_the_picture_its_way():
    calls = []
    tensorboard = SimpleNamespace(
        experiment=SimpleNamespace(add_image=lambda *a, **k: calls.append(("tb", a, k)))
    )
    wandb = SimpleNamespace(experiment=object(), log_image=lambda **k: calls.append(("wandb", k)))
    mlflow = SimpleNamespace(
        run_id="r1", experiment=SimpleNamespace(log_image=lambda *a: calls.append(("mlflow", a)))
    )
    csv = SimpleNamespace(experiment=SimpleNamespace(log_metrics=None))
    rgb = np.zeros((4, 5, 3), np.uint8)
    log_picture([tensorboard, wandb, mlflow, csv], "val/samples", rgb, 12)
    assert calls == [
        ("tb", ("val/samples", rgb, 12), {"dataformats": "HWC"}),
        ("wandb", {"key": "val/samples", "images": [rgb], "step": 12}),
        ("mlflow", ("r1", rgb, "val/samples_step0000012.png")),
    ]


@pytest.mark.parametrize(
    "bad",
    [{"every_n_epochs": -1}, {"max_images": -1}, {"max_classes": 1}, {"keep": 0}, {"alpha": 1.5}],
)
def test_bad_arguments_are_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ValidationPictures(**bad)
