"""Pictures of each validation, in the run folder and in the loggers that take images.

A classifier gets ``confusion_epochNNN.png`` (rows normalised, class names; with more than
``max_classes`` classes, the most-confused ones) and ``samples_epochNNN.png`` (validation images
with their true and predicted labels, mistakes first); a multi-label classifier gets the samples,
each titled with its true and predicted label sets (a mistake: the sets differ; the largest
probability error first); a segmenter gets ``overlays_epochNNN.png``
(rows of image | truth | prediction, the classes in the palette of callbacks.mask_writer, the
ignore value 255 in neutral grey). They are written under ``<default_root_dir>/pictures/`` after
every ``every_n_epochs``-th validation (not the sanity check), the newest ``keep`` epochs of each
kept, and sent to TensorBoard, W&B or MLflow when such a logger is attached (decided by what the
logger can do, as torchgeo's trainers decide; the CSV logger gets files only).

What the callback reads comes from the task, not from a second forward pass: the task's
``pictures`` attribute says what its ``validation_step`` returns (``"classes"``: ``logits``
and ``labels``; ``"label_sets"``: ``logits`` (B, K) and 0/1 ``labels`` (B, K); ``"masks"``:
``masks`` (B, H, W) and ``labels``), and ``on_validation_batch_end``
receives it. Under DDP the confusion matrix is torchmetrics' MulticlassConfusionMatrix, updated on
every rank and gathered by its ``compute()``, which every rank calls once per drawn validation,
in ``on_validation_epoch_end`` (the only collective; the decision to draw is the same on every
rank: epoch and sanity check). The images are rank zero's: the first ``max_images`` of its share
(for a classifier, up to ``max_images`` mistakes and as many correct ones, then mistakes first),
and only rank zero renders and writes. Images are copied to the CPU only until the grid is full.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image, PngImagePlugin
from torchmetrics.classification import MulticlassConfusionMatrix

from ..batch import IGNORE_LABEL, IGNORE_PIXEL
from ..files import write_atomically
from .mask_writer import palette

FOLDER = "pictures"  # under the trainer's default_root_dir (the CLI's run folder)
DPI = 100
NEUTRAL = (128, 128, 128)  # the colour of ignored pixels in an overlay
RIGHT, WRONG = "#1a7f37", "#cf222e"  # title colours of correct and mistaken predictions
NAME_CHARS = 18  # class names are cut to this many characters


class ValidationPictures(Callback):
    """A confusion matrix and labelled samples (classifier) or overlays (segmenter) after each
    validation, as PNGs under ``<default_root_dir>/pictures/`` and in image-capable loggers."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_images: int = 16,
        max_classes: int = 20,
        keep: int = 5,
        alpha: float = 0.5,
    ):
        """Args:
        every_n_epochs: draw after the validation of every n-th epoch; 0 turns pictures off.
        max_images: images in the samples or overlays grid (rank zero's first ones); 0: none.
        max_classes: classes the confusion matrix shows; with more, the most-confused ones.
        keep: the newest epochs whose pictures stay in the folder (older ones are removed).
        alpha: weight of the class colours in a segmentation overlay.
        """
        for name, value, low in (
            ("every_n_epochs", every_n_epochs, 0),
            ("max_images", max_images, 0),
            ("max_classes", max_classes, 2),
            ("keep", keep, 1),
        ):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {name}={value}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha=}")
        self.every_n_epochs, self.max_images = every_n_epochs, max_images
        self.max_classes, self.keep, self.alpha = max_classes, keep, alpha
        self._kind: str | None = None  # this validation's: "classes", "masks" or None (not drawn)
        self._confusion: MulticlassConfusionMatrix | None = None
        self._right: list[tuple] = []  # (image, label, prediction, probability)
        self._wrong: list[tuple] = []
        self._rows: list[tuple] = []  # (image, truth, prediction) of a segmenter

    def folder(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / FOLDER

    # -- collecting ----------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        due = (
            self.every_n_epochs > 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )
        self._kind = getattr(pl_module, "pictures", None) if due else None
        self._right, self._wrong, self._rows = [], [], []
        self._confusion = None
        if self._kind == "classes":
            metric = MulticlassConfusionMatrix(pl_module.num_classes, ignore_index=IGNORE_LABEL)
            self._confusion = metric.to(pl_module.device)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._kind is None or not isinstance(outputs, dict):
            return
        if self._confusion is not None:  # every rank: gathered at the epoch's end
            self._confusion.update(outputs["logits"], outputs["labels"])
        if not trainer.is_global_zero or not self.max_images:
            return
        stats = image_stats(trainer, pl_module)
        if self._kind == "classes" and min(len(self._right), len(self._wrong)) < self.max_images:
            self._collect_classes(outputs, batch["pixel_values"], stats)
        elif (
            self._kind == "label_sets" and min(len(self._right), len(self._wrong)) < self.max_images
        ):
            threshold = getattr(pl_module.hparams, "threshold", 0.5)
            self._collect_sets(outputs, batch["pixel_values"], stats, threshold)
        elif self._kind == "masks" and len(self._rows) < self.max_images:
            self._collect_masks(outputs, batch, stats)

    def _collect_classes(self, outputs, images, stats) -> None:
        probs, preds = outputs["logits"].float().softmax(-1).max(-1)
        labels = outputs["labels"]
        for i, (label, pred, prob) in enumerate(
            zip(labels.tolist(), preds.tolist(), probs.tolist())
        ):
            bucket = self._wrong if pred != label else self._right
            if label != IGNORE_LABEL and len(bucket) < self.max_images:
                bucket.append((to_uint8(images[i], stats), label, pred, prob))

    def _collect_sets(self, outputs, images, stats, threshold: float) -> None:
        """(image, true ids, predicted ids, largest probability error) of labelled rows."""
        probs = outputs["logits"].float().sigmoid()
        for i, (label, prob) in enumerate(zip(outputs["labels"], probs)):
            if (label == IGNORE_LABEL).any():
                continue
            pred = prob >= threshold
            bucket = self._wrong if bool((pred != label.bool()).any()) else self._right
            if len(bucket) < self.max_images:
                error = float((prob - label.float()).abs().max())
                true_ids = tuple(label.nonzero().flatten().tolist())
                pred_ids = tuple(pred.nonzero().flatten().tolist())
                bucket.append((to_uint8(images[i], stats), true_ids, pred_ids, error))

    def _collect_masks(self, outputs, batch, stats) -> None:
        images, masks, labels = batch["pixel_values"], outputs["masks"], outputs["labels"]
        content = batch.get("content")
        for i in range(min(len(masks), self.max_images - len(self._rows))):
            h, w = content[i].tolist() if content is not None else images.shape[-2:]
            image = to_uint8(images[i, :, :h, :w], stats)
            self._rows.append((image, labels[i, :h, :w].cpu(), masks[i, :h, :w].cpu()))

    # -- drawing -------------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._kind is None:
            return
        counts = self._confusion.compute().cpu().numpy() if self._confusion is not None else None
        self._kind, self._confusion = None, None  # (compute: every rank gathers the counts)
        if not trainer.is_global_zero:
            return
        epoch, names = trainer.current_epoch, dict(pl_module.id2label)
        where = f"validation, epoch {epoch}"
        figures = {}
        if counts is not None:
            figures["confusion"] = confusion_figure(counts, names, self.max_classes, where)
        # the most confident mistakes (the largest probability errors) first
        samples = sorted(self._wrong, key=lambda s: -s[3])
        samples = (samples + self._right)[: self.max_images]
        if samples:
            figures["samples"] = samples_figure(samples, names, where)
        if self._rows:
            figures["overlays"] = overlays_figure(self._rows, names, self.alpha, where)
        self._right, self._wrong, self._rows = [], [], []
        folder = self.folder(trainer)
        for name, (figure, description) in figures.items():
            rgb = figure_rgb(figure)
            write_png(folder / f"{name}_epoch{epoch:03d}.png", rgb, description)
            prune(folder, name, self.keep)
            log_picture(trainer.loggers, f"val/{name}", rgb, trainer.global_step)


# -- the figures (matplotlib's object API and Agg canvas: no pyplot, no global state) -----------


def confusion_figure(counts: np.ndarray, names: dict[int, str], max_classes: int, where: str):
    """The row-normalised confusion matrix of ``counts`` (true x predicted), over the
    ``max_classes`` most-confused classes when there are more; (figure, description)."""
    from matplotlib.figure import Figure

    counts = np.asarray(counts, dtype=np.float64)
    shown = most_confused(counts, max_classes)
    totals = counts.sum(1, keepdims=True)
    rows = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    rows = rows[np.ix_(shown, shown)]
    k = len(shown)
    side = max(4.0, 0.38 * k + 2.5)
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    labels = [short(names.get(i, str(i))) for i in shown]
    ax.set_xticks(range(k), labels, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 12:
        for (i, j), value in np.ndenumerate(rows):
            colour = "white" if value > 0.5 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8)
    subset = f"; the {k} most-confused of {len(counts)} classes" if k < len(counts) else ""
    description = f"{where}: confusion matrix, rows normalised, {int(counts.sum())} images{subset}"
    ax.set_title(
        f"{where}: confusion matrix\n{int(counts.sum())} images, rows normalised{subset}",
        fontsize=9,
    )
    return figure, description


def most_confused(counts: np.ndarray, limit: int) -> list[int]:
    """All classes up to ``limit``; else the ``limit`` with the most mistakes, as the true or the
    predicted class, in class order."""
    if len(counts) <= limit:
        return list(range(len(counts)))
    mistakes = counts - np.diag(np.diag(counts))
    score = mistakes.sum(0) + mistakes.sum(1)
    return sorted(np.argsort(-score, kind="stable")[:limit].tolist())


def samples_figure(samples: list[tuple], names: dict[int, str], where: str):
    """A grid of (image, label, prediction, probability) tiles, titled with the true and the
    predicted class (red for a mistake); label and prediction may be tuples of class ids (label
    sets); (figure, description)."""
    from matplotlib.figure import Figure

    n = len(samples)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    figure = Figure(figsize=(1.7 * cols, 1.9 * rows + 0.5), dpi=DPI, layout="constrained")
    wrong = 0
    for k, (image, label, pred, prob) in enumerate(samples):
        ax = figure.add_subplot(rows, cols, k + 1)
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        wrong += pred != label
        colour = WRONG if pred != label else RIGHT
        if isinstance(label, tuple):
            text = f"true {set_text(label, names)}\npred {set_text(pred, names)}"
        else:
            true, guess = short(names.get(label, str(label))), short(names.get(pred, str(pred)))
            text = f"true {true}\npred {guess} ({prob:.2f})"
        ax.set_title(text, color=colour, fontsize=8)
    description = f"{where}: {n} images, {wrong} mistakes first"
    figure.suptitle(f"{where}: {n} images, {wrong} mistakes (red) first", fontsize=10)
    return figure, description


def set_text(ids: tuple[int, ...], names: dict[int, str], shown: int = 3) -> str:
    """A label set as up to ``shown`` class names and a count of the rest; "none" when empty."""
    words = [short(names.get(i, str(i))) for i in ids[:shown]]
    more = f" +{len(ids) - shown}" if len(ids) > shown else ""
    return ", ".join(words) + more if words else "none"


def overlays_figure(rows: list[tuple], names: dict[int, str], alpha: float, where: str):
    """Rows of image | truth | prediction (class colours blended in, ignored pixels grey) and a
    legend of the classes shown; (figure, description)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(rows)
    groups = 2 if n > 4 else 1  # image | truth | prediction triplets side by side
    lines = math.ceil(n / groups)
    figure = Figure(figsize=(4.9 * groups, 1.6 * lines + 0.9), dpi=DPI, layout="constrained")
    present: set[int] = set()
    for r, (image, truth, pred) in enumerate(rows):
        present |= set(torch.cat([truth.flatten(), pred.flatten()]).unique().tolist())
        tiles = (image, overlay(image, truth, alpha), overlay(image, pred, alpha))
        for c, (tile, head) in enumerate(zip(tiles, ("image", "truth", "prediction"))):
            ax = figure.add_subplot(lines, 3 * groups, 3 * r + c + 1)
            ax.imshow(tile, interpolation="nearest")
            ax.set_axis_off()
            if r < groups:
                ax.set_title(head, fontsize=9)
    colours = np.asarray(palette(), dtype=np.float64).reshape(256, 3) / 255
    handles = [
        Patch(color=colours[i % 256], label=short(names.get(i, str(i))))
        for i in sorted(present - {IGNORE_PIXEL})[:24]
    ]
    if IGNORE_PIXEL in present:
        handles.append(Patch(color=np.asarray(NEUTRAL) / 255, label="ignored"))
    figure.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=7
    )
    figure.suptitle(f"{where}: image | truth | prediction", fontsize=10)
    return figure, f"{where}: {n} images, each as image | truth | prediction"


def overlay(image: np.ndarray, mask: torch.Tensor, alpha: float) -> np.ndarray:
    """``image`` (h, w, 3) uint8 blended with each pixel's class colour (grey where ignored)."""
    colours = np.asarray(palette(), dtype=np.float32).reshape(256, 3)
    ids = mask.numpy().astype(np.int64)
    tint = colours[ids % 256]
    tint[ids == IGNORE_PIXEL] = NEUTRAL
    blend = (1 - alpha) * image.astype(np.float32) + alpha * tint
    return blend.round().astype(np.uint8)


def figure_rgb(figure) -> np.ndarray:
    """The figure drawn by Agg, as (H, W, 3) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- images in, files and loggers out -----------------------------------------------------------


def image_stats(trainer, pl_module) -> dict:
    """The mean and std that normalised the images: the datamodule's, else the model's."""
    return getattr(trainer.datamodule, "preprocessing", None) or pl_module.preprocessing or {}


def to_uint8(image: torch.Tensor, stats: dict) -> np.ndarray:
    """A normalised (3, h, w) image as (h, w, 3) uint8; without mean/std, stretched to [0, 1]."""
    image = image.detach().float().cpu()
    if stats.get("mean") is not None and stats.get("std") is not None:
        mean, std = (
            torch.tensor(stats[k], dtype=torch.float32).view(3, 1, 1) for k in ("mean", "std")
        )
        image = image * std + mean
    else:
        image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-6)
    return (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def write_png(path: Path, rgb: np.ndarray, description: str) -> None:
    """An RGB PNG whose ``Description`` text says what it shows; written atomically."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", description)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def prune(folder: Path, name: str, keep: int) -> None:
    """Remove all but the newest ``keep`` epochs' ``<name>_epochNNN.png``."""
    pattern = re.compile(rf"{name}_epoch(\d+)\.png")
    found = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))
    )
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)


def log_picture(loggers, tag: str, rgb: np.ndarray, step: int) -> None:
    """Send the picture to every logger that takes images: TensorBoard's ``add_image``, W&B's
    ``log_image``, MLflow's ``log_image`` (into the run's artifacts); others get nothing."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoardLogger: a SummaryWriter
            experiment.add_image(tag, rgb, step, dataformats="HWC")
        elif hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=tag, images=[rgb], step=step)
        elif hasattr(experiment, "log_image") and getattr(logger, "run_id", None):  # MLFlowLogger
            experiment.log_image(logger.run_id, rgb, f"{tag}_step{step:07d}.png")
