"""HFImageDataModule: image classification data from any Hugging Face ``datasets`` source.

Batches are ``{"pixel_values": (B, 3, H, W) float32, "labels": (B,) int64}`` (``(B, K)`` 0/1 rows
for multi-label data, whose label column holds a list per image: see data.columns); predict batches add
``"ids"`` (file paths, or row indices of the split) for every input and ``"decoded"`` (which of
them are rows of pixel_values). Undecodable images are dropped, counted and named per stage
(``tallies``), which nat_lightning.callbacks.skipped_images.SkippedImagesReport reports and checks
against ``max_skipped_fraction``; a batch of undecodable images only has B = 0.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Image

from .base import PREPROCESSING_RANGES, RANGES, HFDataModule
from .columns import Columns, is_label_list, resolve_columns
from .digits import DIGITS_PARQUET, QUICKSTART
from .folder_structure import empty_class_folders, empty_folders_line
from .images import Collate, ExampleDecoder
from .labels import LabelReader
from .transforms import eval_transform, train_transform

IMAGE_RANGES = {  # argument -> (is it valid, what is expected)
    **RANGES,
    "image_size": PREPROCESSING_RANGES["image_size"],
    "crop_pct": PREPROCESSING_RANGES["crop_pct"],
    "crop_scale": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "(low, high), 0 < low <= high <= 1",
    ),
    "rand_augment_ops": (lambda v: v >= 0, ">= 0"),
    "rand_augment_magnitude": (lambda v: 0 <= v <= 10, "in [0, 10]"),
    "color_jitter": (lambda v: v >= 0, ">= 0"),
    "random_erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
}


class HFImageDataModule(HFDataModule):
    """Images and class labels from a Hub id, a local folder, parquet/arrow files or an in-memory
    ``datasets.Dataset``; map-style by default, streamed with ``streaming=True``.

    ``num_classes`` and ``id2label`` are known right after ``__init__`` (read from the features
    metadata on first access; no image is decoded), so LightningCLI can link them into the model.

    Streaming (see nat_lightning.data.streaming): local and in-memory data are cut into equal
    shards with ``Dataset.to_iterable_dataset``, Hub ids with ``load_dataset(streaming=True)``;
    training shuffles with a seeded buffer and a new epoch each pass; under DDP
    ``split_dataset_by_node`` divides the ranks, each example is read once per epoch, and every
    rank yields the same number of batches, short ranks padding with ``labels = -100``.
    Map-style training data gets Lightning's DistributedSampler; map-style evaluation data (val,
    test, predict) is divided among the ranks without repeating a row (see
    nat_lightning.data.sharding), so val/test metrics count every example exactly once.

    Preprocessing (``image_size``, ``crop_pct``, ``mean``, ``std``): an argument wins, then the
    ``preprocessor_config`` file, then the defaults the LightningModule offers as its
    ``preprocessing`` dict (read in ``setup``), then BUILT_IN_PREPROCESSING (224, 0.875,
    ImageNet mean/std). See ``resolve_preprocessing``.
    """

    EMBEDDED_DATASET: ClassVar[str] = DIGITS_PARQUET
    RANGES: ClassVar[dict] = IMAGE_RANGES

    @classmethod
    def embedded(cls, **overrides) -> HFImageDataModule:
        """The embedded 8x8 digits with the quickstart settings, ``overrides`` on top: the data
        of a task that is given none (NatTask's default data)."""
        return cls(**{"dataset": None, **QUICKSTART, **overrides})

    def __init__(
        self,
        # also HFDataModule's: here as the one positional argument, its None the digits
        dataset: str | list[str] | Dataset | DatasetDict | None = None,
        *,
        label_column: str | None = None,
        label_sets: bool | None = None,
        image_size: int | None = None,
        crop_pct: float | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        rand_augment_ops: int = 2,
        rand_augment_magnitude: float = 9.0,
        color_jitter: float = 0.4,
        random_erasing: float = 0.25,
        **kwargs,
    ):
        """The classification arguments; ``kwargs`` are HFDataModule's.

        Args:
            dataset: a Hub id, a local folder (imagefolder layout, or parquet/arrow files named
                by split), parquet/arrow file(s) as a path, glob or list, or a
                datasets.Dataset/DatasetDict. None: the embedded 8x8 digits (DIGITS_PARQUET).
            label_column: label column; the ClassLabel column (else a list of ClassLabel, else
                one named label/labels) when None.
            label_sets: None: a set of classes per image when the label column holds a list per
                image (class ids, names or multi-hot vectors), one class otherwise; True: plain
                labels as one-class sets; False: each list must hold exactly one class.
            image_size: side of the square training and evaluation crops; None: the
                preprocessor_config's, else the LightningModule's, else 224.
            crop_pct: evaluation resizes the shorter side to ``int(image_size / crop_pct)``, then
                centre-crops; None: the preprocessor_config's, else the LightningModule's, else
                0.875.
            crop_scale: area range of the training RandomResizedCrop.
            rand_augment_ops: RandAugment ops applied per image; 0 disables RandAugment.
            rand_augment_magnitude: RandAugment magnitude on 0..10.
            color_jitter: brightness, contrast and saturation jitter; 0 disables it.
            random_erasing: probability of erasing a random box.
            kwargs: the arguments every data module takes (splits, streaming, hflip, mean, std,
                preprocessor_config, batch_size, workers, seed, predict inputs,
                max_skipped_fraction, ...): see HFDataModule.
        """
        super().__init__(dataset=dataset, **kwargs)

    @property
    def image_size(self) -> int:
        return self._preprocessing["image_size"]

    @property
    def crop_pct(self) -> float:
        return self._preprocessing["crop_pct"]

    # -- what the data is: resolved lazily, without decoding images ----------------------------

    @cached_property
    def columns(self) -> Columns:
        """Image and label columns and the class names."""
        hp = self.hparams
        features = self._features(
            "a dataset with an Image column and a ClassLabel, string or integer label"
        )
        return resolve_columns(
            features,
            self.dataset,
            hp.image_column,
            hp.label_column,
            self._label_values,
            label_sets=hp.label_sets,
        )

    @property
    def multi_label(self) -> bool:
        """Whether an image has a set of classes (``labels`` rows of 0/1) rather than one."""
        return self.columns.multi_label

    @cached_property
    def empty_folders_note(self) -> str | None:
        """One line naming the empty folders beside the class folders of a local image folder
        (imagefolder makes no class of them), for SkippedImagesReport to print at the end of
        a stage; None when there are none or the classes are not folder names."""
        if not (isinstance(self.dataset, str) and Path(self.dataset).expanduser().is_dir()):
            return None  # checked first: a Hub id's features are a request away
        features = self._features("an image folder")
        if set(features) != {"image", "label"}:
            return None
        if not (isinstance(features["image"], Image) and isinstance(features["label"], ClassLabel)):
            return None
        paths = [
            path
            for split in self.all_splits.values()
            if isinstance(split, Dataset)
            for path in pc.struct_field(split.data.column("image"), "path").to_pylist()
            if path is not None
        ]
        empty = empty_class_folders(self.dataset, paths)
        return empty_folders_line(self.dataset, empty, self.columns.names)

    def _label_values(self, column: str):
        """Every raw value of a string/integer label column (every row of a list column), over
        all splits."""
        for split in self.all_splits.values():
            if isinstance(split, Dataset) and is_label_list(split.features[column]):
                yield from split.select_columns([column])[column]
            elif isinstance(split, Dataset):
                yield from split.unique(column)
            else:
                yield from (row[column] for row in split.select_columns([column]))

    def _stratify_column(self) -> str | None:
        return self.columns.label

    # -- the training labels, read without decoding an image ----------------------------------

    def train_classes(self) -> np.ndarray:
        """The class id of every training example, in row order, read from the label column alone
        (IGNORE_LABEL for a row without a class), for ``sampler='balanced'`` and
        ``label_counts``. A Hub stream is not read ahead, and a multi-label example has no single
        class: a ValueError."""
        if self.multi_label:
            raise ValueError(
                "sampler='balanced' draws examples by their one class, and the examples of this "
                f"multi-label data (label_column={self.columns.label!r}) have a set of classes "
                "each; use sampler='random' and the model's class_weights=auto (a pos_weight per "
                "class)"
            )
        return self._training_labels()

    def train_label_sets(self) -> np.ndarray:
        """(N, K) 0/1 rows of the training examples' classes (all IGNORE_LABEL for a row without
        labels), read from the label column alone, for a multi-label ``class_weights=auto``."""
        labels = self._training_labels()
        return labels.reshape(len(labels), self.num_classes)

    def label_counts(self) -> list[int]:
        """Training examples per class, in class id order (for ``class_weights=auto``); for
        multi-label data, the examples that hold each class."""
        if self.multi_label:
            sets = self.train_label_sets()
            return sets[(sets >= 0).all(1)].sum(0).tolist()
        ids = self.train_classes()
        return np.bincount(ids[ids >= 0], minlength=self.num_classes).tolist()

    def _training_labels(self) -> np.ndarray:
        rows, column = self._training_rows("labels"), self.columns.label
        label = LabelReader(self.columns)
        values = rows.select_columns([column])[column]  # no image column read
        return np.array([label({column: v}) for v in values], dtype=np.int64)

    def _kept_columns(self) -> tuple[list[str | None], list[str]]:
        return [self.columns.image, self.columns.label], [self.columns.image]

    # -- decoding and batching ----------------------------------------------------------------

    def _decoder(self, role: str) -> ExampleDecoder:
        train = role == "train"
        transform = self._train_transform() if train else self._eval_transform()
        return ExampleDecoder(self.columns, transform, random=train)

    def _unlabelled_decoder(self) -> ExampleDecoder:
        return ExampleDecoder(Columns("image", None, (), None), self._eval_transform(), False)

    def _collate(self, role: str) -> Collate:
        return Collate(self.image_size, self.num_classes if self.multi_label else None)

    def _train_transform(self):
        hp = self.hparams
        return train_transform(
            self.image_size,
            self.mean,
            self.std,
            crop_scale=hp.crop_scale,
            hflip=hp.hflip,
            rand_augment_ops=hp.rand_augment_ops,
            rand_augment_magnitude=hp.rand_augment_magnitude,
            color_jitter=hp.color_jitter,
            random_erasing=hp.random_erasing,
        )

    def _eval_transform(self):
        return eval_transform(self.image_size, self.mean, self.std, self.crop_pct)


def quickstart_datamodule(**overrides) -> HFImageDataModule:
    """An HFImageDataModule on the embedded digits with the quickstart settings (digits.QUICKSTART,
    configs/quickstart.yaml's data section), ``overrides`` on top."""
    return HFImageDataModule.embedded(**overrides)
