"""HFImageDataModule: image classification data from any Hugging Face ``datasets`` source.

Batches are ``{"pixel_values": (B, 3, H, W) float32, "labels": (B,) int64}``; predict batches add
``"ids"`` (file paths, or row indices of the split) for every input and ``"decoded"`` (which of
them are rows of pixel_values). Undecodable images are dropped, counted and named per stage
(``tallies``), which nat_lightning.callbacks.skipped_images.SkippedImagesReport reports and checks
against ``max_skipped_fraction``; a batch of undecodable images only has B = 0.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import ClassVar

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Image

from .base import PREPROCESSING_RANGES, RANGES, HFDataModule
from .columns import Columns, resolve_columns
from .digits import DIGITS_PARQUET, QUICKSTART
from .folder_structure import empty_class_folders, empty_folders_line
from .images import Collate, ExampleDecoder
from .transforms import eval_transform, train_transform

IMAGE_RANGES = {  # argument -> (is it valid, what is expected)
    **RANGES,
    "image_size": PREPROCESSING_RANGES["image_size"],
    "crop_pct": PREPROCESSING_RANGES["crop_pct"],
    "crop_scale": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "(low, high), 0 < low <= high <= 1",
    ),
    "hflip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
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

    RANGES: ClassVar[dict] = IMAGE_RANGES

    @classmethod
    def embedded(cls, **overrides) -> HFImageDataModule:
        """The embedded 8x8 digits with the quickstart settings, ``overrides`` on top: the data
        of a task that is given none (NatTask's default data)."""
        return cls(**{"dataset": None, **QUICKSTART, **overrides})

    def __init__(
        self,
        dataset: str | list[str] | Dataset | DatasetDict | None = None,
        config_name: str | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        val_fraction: float = 0.1,
        image_column: str | None = None,
        label_column: str | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        image_size: int | None = None,
        crop_pct: float | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        rand_augment_ops: int = 2,
        rand_augment_magnitude: float = 9.0,
        color_jitter: float = 0.4,
        random_erasing: float = 0.25,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        preprocessor_config: str | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        seed: int = 0,
        predict_split: str | None = None,
        predict_paths: str | list[str] | None = None,
        cache_dir: str | None = None,
        max_skipped_fraction: float = 0.5,
    ):
        """Args:
        dataset: a Hub id, a local folder (imagefolder layout, or parquet/arrow files named by
            split),
            parquet/arrow file(s) as a path, glob or list, or a datasets.Dataset/DatasetDict.
            None: the embedded 8x8 digits (DIGITS_PARQUET).
        config_name: the Hub dataset's configuration (subset).
        train_split: split to train on.
        val_split: split to validate on; if the dataset has none, ``val_fraction`` of train is held
            out (seeded, stratified by class; not possible for Hub streams). None: no validation.
        test_split: split for ``test``; None: none.
        val_fraction: share of train held out when ``val_split`` does not exist.
        image_column: image column; the datasets.Image column when None.
        label_column: label column; the ClassLabel column (else one named label/labels) when None.
        streaming: read an IterableDataset (shuffle buffer, DDP/worker shards) instead of map-style.
        shuffle_buffer: examples in the streaming shuffle buffer.
        image_size: side of the square training and evaluation crops; None: the
            preprocessor_config's, else the LightningModule's, else 224.
        crop_pct: evaluation resizes the shorter side to ``int(image_size / crop_pct)``, then
            centre-crops; None: the preprocessor_config's, else the LightningModule's, else 0.875.
        crop_scale: area range of the training RandomResizedCrop.
        hflip: probability of a horizontal flip.
        rand_augment_ops: RandAugment ops applied per image; 0 disables RandAugment.
        rand_augment_magnitude: RandAugment magnitude on 0..10.
        color_jitter: brightness, contrast and saturation jitter; 0 disables it.
        random_erasing: probability of erasing a random box.
        mean: normalisation mean (RGB, 0..1 scale); None: the preprocessor_config's, else the
            LightningModule's, else ImageNet's.
        std: normalisation std; None: the preprocessor_config's, else the LightningModule's, else
            ImageNet's.
        preprocessor_config: a transformers preprocessor_config.json (or its folder); its size,
            crop_pct, image_mean and image_std fill image_size, crop_pct, mean and std where
            those are None.
        batch_size: examples per batch and process.
        num_workers: DataLoader worker processes; min(4, CPU count) when None.
        pin_memory: pin batches in page-locked memory; None: True when CUDA is available.
        persistent_workers: keep workers alive between epochs; None: True when there are workers.
        seed: seed of the held-out validation split and of the streaming shuffle.
        predict_split: split to run ``predict`` on; ids are its row indices.
        predict_paths: a folder of images or a list of image files to run ``predict`` on; ids
            are the paths.
        cache_dir: where ``datasets`` caches downloads and Arrow files; its default cache when None.
        max_skipped_fraction: a stage's epoch (train, validate, test, predict) whose share of
            undecodable images exceeds this stops the run with an error naming them (a wrong
            root, a missing codec); 1.0 never stops.
        """
        super().__init__()
        # an in-memory dataset has no place in a checkpoint: _start records its description
        self.save_hyperparameters(ignore=["dataset"])
        given = {"image_size": image_size, "crop_pct": crop_pct, "mean": mean, "std": std}
        self._start(dataset, DIGITS_PARQUET, given)

    @property
    def image_size(self) -> int:
        return self._preprocessing["image_size"]

    @property
    def crop_pct(self) -> float:
        return self._preprocessing["crop_pct"]

    # -- what the data is: resolved lazily, without decoding images ----------------------------

    @property
    def num_classes(self) -> int:
        return len(self.columns.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.columns.names))

    @cached_property
    def columns(self) -> Columns:
        """Image and label columns and the class names."""
        hp = self.hparams
        features = self._features(
            "a dataset with an Image column and a ClassLabel, string or integer label"
        )
        return resolve_columns(
            features, self.dataset, hp.image_column, hp.label_column, self._label_values
        )

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
        """Every raw value of a string/integer label column, over all splits."""
        for split in self.all_splits.values():
            if isinstance(split, Dataset):
                yield from split.unique(column)
            else:
                yield from (row[column] for row in split.select_columns([column]))

    def _stratify_column(self) -> str | None:
        return self.columns.label

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
        return Collate(self.image_size)

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
