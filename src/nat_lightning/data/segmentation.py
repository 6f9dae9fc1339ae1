"""HFSegmentationDataModule: semantic segmentation data (an image and a mask per example).

Batches are ``{"pixel_values": (B, 3, H, W) float32, "labels": (B, H, W) int64}`` with 255 for
pixels that count in no loss or metric. Evaluation and predict batches are padded to their
largest image (image 0, mask 255) and add ``"sizes"`` and ``"content"`` (B, 2) int64: each
image's original (h, w), and its (h, w) once resized, before padding, at the batch's top left
(crop ``[:h, :w]`` of a prediction, then resize it to ``sizes``). Predict batches add ``"ids"``
and ``"decoded"`` as the classification ones do. Pairs whose image or mask cannot be decoded are
dropped, counted and named per stage (``tallies``, see SkippedImagesReport).

Labels are checked where masks are read: an id that is neither a class nor 255 stops the run
naming the mask (MaskLabelError), and ``setup`` reads up to SCANNED_MASKS masks of each
split it prepares, so that such ids, and a split with no labelled pixel at all (a wrong
reduce_labels or color_map), fail there and not mid-run. Hub streams are not read ahead:
NatSegmenter stops at the end of an evaluation epoch that saw no labelled pixel.
"""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar, Literal

from datasets import Dataset, DatasetDict

from ..batch import IGNORE_PIXEL, IMAGENET_MEAN, IMAGENET_STD
from .base import RANGES, HFDataModule
from .joint_transforms import eval_finish, eval_resize, train_pipeline
from .masks import (
    IMAGE_NAMES,
    MASK_NAMES,
    MaskColumns,
    class_names,
    find_column,
    mask_colours,
    parse_color_map,
)
from .pairs import PairCollate, PairDecoder, class_pixels, count_labelled, scanned_rows
from .shapes import SHAPES_DATASET, SHAPES_QUICKSTART
from .sources import Split, Splits, describe, is_folder_pair, load_folder_pairs

SCANNED_MASKS = 64  # masks of a split setup reads, evenly spaced: about 0.1 s at 512 px
ROLE_NAMES = {"train": "training", "val": "validation", "test": "test"}
SEGMENTATION_RANGES = {  # argument -> (is it valid, what is expected)
    **RANGES,
    "crop_size": (lambda v: v >= 1, ">= 1"),
    "base_size": (lambda v: v is None or v >= 1, ">= 1 or None"),
    "eval_size": (lambda v: v is None or v >= 1, ">= 1 or None"),
    "scale_range": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "(low, high), 0 < low <= high"),
    "cat_max_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "unnamed_classes": (
        lambda v: v is None or 1 <= v <= IGNORE_PIXEL,
        f"in 1..{IGNORE_PIXEL} ({IGNORE_PIXEL} is ignored) or None",
    ),
    "mask_size_mismatch": (lambda v: v in ("resize", "error"), "'resize' or 'error'"),
}


class HFSegmentationDataModule(HFDataModule):
    """Images and masks of class ids from a Hub id, a local folder (``images/`` and ``masks/``
    with matching file names, optionally in one subfolder per split; or parquet/arrow files named
    by split), parquet/arrow files, or a ``datasets.Dataset``/``DatasetDict``; map-style by
    default, streamed with ``streaming=True``. Sources, splits, streaming and DDP behave as in
    HFImageDataModule (same base): evaluation reads every example exactly once over the ranks.

    ``num_classes`` and ``id2label`` are known right after ``__init__``: from ``labels_file``,
    else the ClassLabel of a list column (the classes each mask holds), else ``unnamed_classes``
    (named ``class_i``).

    Preprocessing (``mean``, ``std``): the argument, else the ``preprocessor_config`` file, else
    the LightningModule's ``preprocessing`` (read in ``setup``), else ImageNet's; see
    ``resolve_preprocessing``. ``preprocessing`` holds the result.
    """

    EMBEDDED_DATASET: ClassVar[str] = SHAPES_DATASET
    PREPROCESSING: ClassVar[dict] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    RANGES: ClassVar[dict] = SEGMENTATION_RANGES

    @classmethod
    def embedded(cls, **overrides) -> HFSegmentationDataModule:
        """The embedded shapes with the quickstart settings (configs/seg_quickstart.yaml's data
        section), ``overrides`` on top: the data of a task that is given none."""
        return cls(**{"dataset": None, **SHAPES_QUICKSTART, **overrides})

    def __init__(
        self,
        # also HFDataModule's: here as the one positional argument, its None the shapes
        dataset: str | list[str] | Dataset | DatasetDict | None = None,
        *,
        mask_column: str | None = None,
        unnamed_classes: int | None = None,
        labels_file: str | None = None,
        reduce_labels: bool = False,
        color_map: dict[str, int] | None = None,
        mask_size_mismatch: Literal["resize", "error"] = "resize",
        crop_size: int = 512,
        base_size: int | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        photometric_distortion: bool = True,
        eval_size: int | None = None,
        batch_size: int = 16,
        **kwargs,
    ):
        """The segmentation arguments; ``kwargs`` are HFDataModule's.

        Args:
            dataset: a Hub id, a local folder (``images/`` + ``masks/``, or parquet/arrow files
                named by split), parquet/arrow file(s) as a path, glob or list, or a
                datasets.Dataset/DatasetDict. None: the embedded shapes (SHAPES_DATASET).
            mask_column: mask column; None: the first of annotation, label, mask, segmentation_mask,
                semantic_map.
            unnamed_classes: classes when the dataset names none (they are called class_i); None: as
                many as labels_file or the dataset names.
            labels_file: a JSON of id -> name (ids after reduce_labels) or a list of names; None:
                the names of the dataset's ClassLabel list column (the classes each mask holds).
            reduce_labels: ADE20K's convention: mask id 0 ("other") becomes 255 (ignored), every
                other id drops by one.
            color_map: for RGB masks, colour -> class id, colours as '#rrggbb' or 'r,g,b'; colours
                not in it become 255. None: an RGB mask is an error.
            mask_size_mismatch: a mask whose size differs from its image's is resized to it
                (nearest neighbours, "resize") or stops the run naming the pair ("error").
            crop_size: side of the square training crops.
            base_size: shorter side that training scales by a ratio drawn from scale_range; None:
                crop_size.
            scale_range: (low, high) of the random training scale ratio.
            cat_max_ratio: a training crop is drawn again (up to 10 times, as mmseg) while one class
                covers this share of its labelled pixels or more; 1.0: never.
            photometric_distortion: brightness, contrast, saturation and hue jitter as mmseg's
                PhotoMetricDistortion (image only).
            eval_size: shorter side of evaluation and predict images (then padded to a multiple of
                32); None: crop_size.
            batch_size: examples per batch and process.
            kwargs: the arguments every data module takes (splits, streaming, hflip, mean, std,
                preprocessor_config: its image_mean and image_std, workers, seed, predict inputs,
                max_skipped_fraction, ...): see HFDataModule.
        """
        super().__init__(dataset=dataset, batch_size=batch_size, **kwargs)
        self._color_map = parse_color_map(color_map)
        self._checked: set[str] = set()  # roles whose split setup has read

    # -- what the data is: resolved lazily, without decoding images ----------------------------

    @property
    def crop_size(self) -> int:
        return self.hparams.crop_size

    @property
    def eval_size(self) -> int:
        return self.hparams.eval_size or self.hparams.crop_size

    def _load_splits(self) -> Splits:
        """An ``images/`` + ``masks/`` folder's splits, or as ``datasets`` loads them."""
        if is_folder_pair(self.dataset):
            return load_folder_pairs(self.dataset)
        return super()._load_splits()

    @cached_property
    def columns(self) -> MaskColumns:
        """Image and mask columns and the class names."""
        hp = self.hparams
        features = self._features("a dataset with an image column and a mask column")
        image = find_column(features, self.dataset, hp.image_column, "image_column", IMAGE_NAMES)
        mask = find_column(features, self.dataset, hp.mask_column, "mask_column", MASK_NAMES)
        names = class_names(features, hp.labels_file, hp.unnamed_classes, self.dataset)
        return MaskColumns(image, mask, names)

    def _kept_columns(self) -> tuple[list[str | None], list[str]]:
        images = [self.columns.image, self.columns.mask]
        return images, images

    # -- decoding and batching ----------------------------------------------------------------

    def _decoder(self, role: str, columns: MaskColumns | None = None) -> PairDecoder:
        hp = self.hparams
        options = {
            "reduce": hp.reduce_labels,
            "color_map": self._color_map,
            "mismatch": hp.mask_size_mismatch,
            "check": role != "predict",  # predict ignores the labels
            "rows": None if columns is not None else self._rows(role),
        }
        columns = columns or self.columns
        if role != "train":
            finish = eval_finish(self.mean, self.std)
            return PairDecoder(columns, eval_resize(self.eval_size), finish, **options)
        pipeline = train_pipeline(
            hp.crop_size,
            hp.base_size or hp.crop_size,
            self.mean,
            self.std,
            scale_range=tuple(hp.scale_range),
            hflip=hp.hflip,
            photometric=hp.photometric_distortion,
            cat_max_ratio=hp.cat_max_ratio,
        )
        return PairDecoder(columns, pipeline, **options)

    def _rows(self, role: str) -> str | None:
        """What the role's row indices count in, for errors: the split, where its rows are the
        dataset's; None for an images/ + masks/ folder (its files name its rows)."""
        if is_folder_pair(self.dataset) or role not in self.splits:
            return None
        name = self.splits[role].name
        val_split = self.hparams.val_split
        held_out = role in ("train", "val") and val_split is not None
        held_out = held_out and val_split not in self.all_splits  # carve_validation's rows
        return repr(name) if held_out else f"split {name!r}"

    def _unlabelled_decoder(self) -> PairDecoder:
        return self._decoder("predict", MaskColumns("image", None, ()))

    def _collate(self, role: str) -> PairCollate:
        train = role == "train"
        return PairCollate(self.crop_size if train else self.eval_size, evaluation=not train)

    # -- the labels, checked once per split at setup -----------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """As HFDataModule's, then the labels of the splits the stage uses (see
        ``_check_labels``)."""
        super().setup(stage)
        roles = {"validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage, ("train", "val")
        )
        for role in roles:
            if role in self.splits and role not in self._checked:
                self._check_labels(role)
                self._checked.add(role)

    def _check_labels(self, role: str) -> None:
        """Read up to SCANNED_MASKS masks of the role's split (all of a small one; evenly spaced
        ones of a large one, so a huge split adds well under a second): a mask with ids that
        are no class stops here (MaskLabelError), and so does a split whose masks read have no
        labelled pixel. A Hub stream is not read ahead (NatSegmenter checks its epochs); local
        data is Arrow, read at will even when ``streaming``."""
        split = self.splits[role]
        if not isinstance(split.data, Dataset):
            return
        rows = scanned_rows(len(split.data), SCANNED_MASKS)
        read, labelled = count_labelled(split.data, self._decoder(role), rows)
        if read and not labelled:
            raise ValueError(self._unlabelled_message(role, split, read))

    def label_counts(self) -> list[int]:
        """Labelled pixels per class, in class id order, of up to SCANNED_MASKS masks of the
        training split (all of a small one, else evenly spaced ones: about 0.1 s at 512 px),
        as stored (reduced and mapped, not augmented), for ``class_weights=auto``. A Hub stream
        is not read ahead: a ValueError."""
        rows = self._training_rows("pixels")
        scanned = scanned_rows(len(rows), SCANNED_MASKS)
        return class_pixels(rows, self._decoder("train"), scanned)[1].tolist()

    def _unlabelled_message(self, role: str, split: Split, read: int) -> str:
        total = len(split.data)
        masks = f"its {read} masks" if read == total else f"{read} of its {total} masks read"
        causes = []
        if self.hparams.reduce_labels:
            causes.append(
                f"reduce_labels=True on masks whose 0 is a class (it makes 0 {IGNORE_PIXEL})"
            )
        if self._color_map is not None:
            found = mask_colours(split.data[0][self.columns.mask])
            causes.append(
                "a color_map that matches none of the masks' colours (colours it does not name "
                f"become {IGNORE_PIXEL}; the first mask holds {found})"
            )
        causes.append(
            f"masks that hold only {IGNORE_PIXEL} (or a mask_column that is not the masks)"
        )
        return (
            f"the {ROLE_NAMES[role]} split {split.name!r} of dataset {describe(self.dataset)} has "
            f"no labelled pixel: every pixel of {masks} is {IGNORE_PIXEL} (ignored), so its loss "
            f"and mIoU would be NaN; likely causes: {'; '.join(causes)}"
        )


def shapes_datamodule(**overrides) -> HFSegmentationDataModule:
    """An HFSegmentationDataModule on the embedded shapes with the quickstart settings
    (shapes.SHAPES_QUICKSTART, configs/seg_quickstart.yaml's data section), ``overrides`` on top."""
    return HFSegmentationDataModule.embedded(**overrides)
