"""HFImageDataModule: image classification data from any Hugging Face ``datasets`` source.

Batches are ``{"pixel_values": (B, 3, H, W) float32, "labels": (B,) int64}``; predict batches add
``"ids"`` (file paths, or row indices of the split) for every input and ``"decoded"`` (which of
them are rows of pixel_values). Undecodable images are dropped, counted and named per stage
(``tallies``), which nat_lightning.callbacks.skipped_images.SkippedImagesReport reports and checks
against ``max_skipped_fraction``; a batch of undecodable images only has B = 0.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property

import lightning as L
import torch
from datasets import Dataset, DatasetDict, Image
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Sampler

from .columns import Columns, resolve_columns
from .digits import DIGITS_PARQUET
from .images import Collate, ExampleDecoder, ImageExamples, SkipTally
from .sharding import eval_sampler
from .sources import (
    Split,
    Splits,
    carve_validation,
    describe,
    hub_features,
    image_files,
    is_hub_id,
    load_splits,
    pick_split,
)
from .streaming import EvenLoader, StreamingExamples, rank_stream
from .transforms import (
    BUILT_IN_PREPROCESSING,
    config_preprocessing,
    eval_transform,
    train_transform,
)

log = logging.getLogger(__name__)
BUILT_IN = "the built-in default"  # the source of a preprocessing value nothing else gave


class HFImageDataModule(L.LightningDataModule):
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
        # an in-memory dataset has no place in a checkpoint: it is recorded by its description
        self.save_hyperparameters(ignore=["dataset"])
        check_arguments(self.hparams)
        in_memory = not (dataset is None or isinstance(dataset, (str, list)))
        self.hparams["dataset"] = describe(dataset) if in_memory else dataset
        self.dataset = DIGITS_PARQUET if dataset is None else dataset
        given = {"image_size": image_size, "crop_pct": crop_pct, "mean": mean, "std": std}
        self._arguments = {key: value for key, value in given.items() if value is not None}
        self._from_config = (
            config_preprocessing(preprocessor_config) if preprocessor_config is not None else {}
        )
        self._preprocessing: dict = {}  # key -> value, resolved
        self._source: dict[str, str] = {}  # key -> where its value came from
        self.resolve_preprocessing()  # provisional: setup() may fill built-in values from the model
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = (
            self.num_workers > 0 if persistent_workers is None else persistent_workers
        )
        self.tallies: dict[str, SkipTally] = {}  # per trainer stage, until reported
        self._epoch = 0  # used when no trainer is attached (set_epoch)

    # -- preprocessing: arguments > preprocessor_config > the LightningModule's > built-in ------

    def resolve_preprocessing(self, defaults: dict | None = None) -> dict:
        """``image_size``, ``crop_pct``, ``mean`` and ``std``, each from the first that gives it:
        the argument, the ``preprocessor_config`` file, ``defaults`` (``setup`` passes the
        LightningModule's ``preprocessing``), BUILT_IN_PREPROCESSING.

        Only values still at their built-in fallback are filled again, so the first source that
        gave a value keeps it. The result is written to ``hparams``, which checkpoints keep.
        """
        return self._resolve(defaults, "defaults")

    def _resolve(self, defaults: dict | None, origin: str) -> dict:
        defaults = defaults or {}
        unknown = sorted(set(defaults) - set(BUILT_IN_PREPROCESSING))
        if unknown:
            raise ValueError(
                f"{origin} has keys {unknown}: expected only {sorted(BUILT_IN_PREPROCESSING)}"
            )
        sources = (
            ("the argument", self._arguments),
            (f"preprocessor_config={self.hparams.preprocessor_config!r}", self._from_config),
            (origin, defaults),
            (BUILT_IN, BUILT_IN_PREPROCESSING),
        )
        for key in BUILT_IN_PREPROCESSING:
            if self._source.get(key, BUILT_IN) != BUILT_IN:
                continue  # an earlier source gave it
            source, value = next((s, v[key]) for s, v in sources if v.get(key) is not None)
            valid, expected = RANGES[key]
            if not valid(value):
                raise ValueError(f"{key}={value!r} from {source}: expected {expected}")
            self._preprocessing[key] = PREPROCESSING_TYPES[key](value)
            self._source[key] = source
        self.hparams.update(self._preprocessing)
        return dict(self._preprocessing)

    @property
    def image_size(self) -> int:
        return self._preprocessing["image_size"]

    @property
    def crop_pct(self) -> float:
        return self._preprocessing["crop_pct"]

    @property
    def mean(self) -> tuple[float, float, float]:
        return self._preprocessing["mean"]

    @property
    def std(self) -> tuple[float, float, float]:
        return self._preprocessing["std"]

    # -- what the data is: resolved lazily, without decoding images ----------------------------

    @property
    def num_classes(self) -> int:
        return len(self.columns.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.columns.names))

    @cached_property
    def all_splits(self) -> Splits:
        """Every split of the dataset, as ``datasets`` loads it (streamed only for Hub ids)."""
        hp = self.hparams
        return load_splits(self.dataset, hp.config_name, hp.streaming, hp.cache_dir)

    @cached_property
    def columns(self) -> Columns:
        """Image and label columns and the class names."""
        hp = self.hparams
        features = None
        if is_hub_id(self.dataset) and not hp.streaming:
            # the Hub's metadata: no download when LightningCLI reads num_classes at instantiation
            features = hub_features(self.dataset, hp.config_name, hp.cache_dir)
        if features is None:
            features = pick_split(
                self.all_splits, hp.train_split, self.dataset, "train_split"
            ).data.features
        if features is None:
            raise ValueError(
                f"dataset {describe(self.dataset)} does not declare its features (column types); "
                "expected a dataset with an Image column and a ClassLabel, string or integer label"
            )
        return resolve_columns(
            features, self.dataset, hp.image_column, hp.label_column, self._label_values
        )

    def _label_values(self, column: str):
        """Every raw value of a string/integer label column, over all splits."""
        for split in self.all_splits.values():
            if isinstance(split, Dataset):
                yield from split.unique(column)
            else:
                yield from (row[column] for row in split.select_columns([column]))

    @cached_property
    def splits(self) -> dict[str, Split]:
        """The splits by role (train, val, test, predict), images left undecoded."""
        hp, available = self.hparams, self.all_splits
        train = pick_split(available, hp.train_split, self.dataset, "train_split")
        roles = {"train": train}
        if hp.val_split is not None and hp.val_split in available:
            roles["val"] = pick_split(available, hp.val_split, self.dataset, "val_split")
        elif hp.val_split is not None:
            log.info(
                "dataset %s has no split %r (splits: %s): holding out val_fraction=%s of %r",
                describe(self.dataset),
                hp.val_split,
                sorted(available),
                hp.val_fraction,
                hp.train_split,
            )
            roles["train"], roles["val"] = carve_validation(
                train, hp.val_fraction, hp.seed, self.columns.label, self.dataset
            )
        if hp.test_split is not None:
            roles["test"] = pick_split(available, hp.test_split, self.dataset, "test_split")
        if hp.predict_split is not None:
            roles["predict"] = pick_split(
                available, hp.predict_split, self.dataset, "predict_split"
            )
        return {role: self._undecoded(split) for role, split in roles.items()}

    def _undecoded(self, split: Split) -> Split:
        """Only the image and label columns, the image as stored bytes/paths (decoded by us)."""
        names = split.data.column_names
        keep = [
            c
            for c in (self.columns.image, self.columns.label)
            if c and (names is None or c in names)
        ]
        data = split.data.select_columns(keep).cast_column(self.columns.image, Image(decode=False))
        return Split(split.name, data, split.size)

    # -- Lightning hooks -----------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download (Hub) or convert to Arrow (local files) once per node, before ``setup``."""
        if not (self.hparams.streaming and is_hub_id(self.dataset)):
            _ = self.all_splits  # loads (and caches) every split

    def setup(self, stage: str | None = None) -> None:
        """Fill the preprocessing the arguments and preprocessor_config leave open from the
        LightningModule's ``preprocessing``; resolve the splits the stage needs, so that a wrong
        name fails here and not mid-run."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
        self._resolve(getattr(module, "preprocessing", None), "the LightningModule's preprocessing")
        if stage == "predict" and self.hparams.predict_paths is not None:
            image_files(self.hparams.predict_paths)
            return
        role = {"validate": "val", "test": "test", "predict": "predict"}.get(stage)
        if role is not None:
            self._split(role)
        else:
            _ = self.splits  # resolves train and val

    def set_epoch(self, epoch: int) -> None:
        """The epoch streaming shuffles for without a trainer (with one, the trainer's)."""
        self._epoch = epoch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_paths is not None:
            files = image_files(self.hparams.predict_paths)
            rows = Dataset.from_dict({"image": files}).cast_column("image", Image(decode=False))
            # unlabelled files: the dataset's columns play no part (and are not loaded)
            decoder = ExampleDecoder(
                Columns("image", None, (), None), self._eval_transform(), False
            )
            return self._map_loader(ImageExamples(rows, decoder, ids=files), "predict")
        return self._loader("predict")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Move the batch's decode counts into ``tallies`` under the trainer's stage."""
        stage = self.trainer.state.stage if self.trainer is not None else None
        tally = SkipTally() if stage is None else self.tallies.setdefault(stage.value, SkipTally())
        tally.take(batch)
        return batch

    # -- loaders -------------------------------------------------------------------------------

    def _split(self, role: str) -> Split:
        if role not in self.splits:
            field = SPLIT_FIELDS[role]
            extra = " or predict_paths" if role == "predict" else ""
            raise ValueError(
                f"{role} needs data: {field}=None; set {field}{extra} to one of the splits of "
                f"dataset {describe(self.dataset)}: {sorted(self.all_splits)}"
            )
        return self.splits[role]

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

    def _loader(self, role: str) -> DataLoader:
        split, train = self._split(role), role == "train"
        transform = self._train_transform() if train else self._eval_transform()
        decoder = ExampleDecoder(self.columns, transform, random=train)
        if role == "predict":
            if isinstance(split.data, Dataset):
                return self._map_loader(ImageExamples(split.data, decoder, ids=True), role)
            return self._predict_stream(split, decoder)
        if not self.hparams.streaming:
            return self._map_loader(ImageExamples(split.data, decoder), role)
        hp = self.hparams
        rank, world = self._rank_and_world()
        stream, num_batches = rank_stream(
            split,
            shuffle=train,
            seed=hp.seed,
            shuffle_buffer=hp.shuffle_buffer,
            rank=rank,
            world_size=world,
            workers=self.num_workers,
            batch_size=hp.batch_size,
        )
        examples = StreamingExamples(stream, decoder)
        collate = Collate(self.image_size)
        return EvenLoader(
            examples, num_batches, self._current_epoch, collate, **self._loader_args()
        )

    def _predict_stream(self, split: Split, decoder: ExampleDecoder) -> DataLoader:
        """A Hub stream read by one process per rank, taking every world-th row: row k of rank r
        is row r + k * world of the split, its id."""
        rank, world = self._rank_and_world()
        stream = split.data
        if world > 1:
            stream = split_dataset_by_node(stream, rank, world, strategy="examples")
        examples = StreamingExamples(stream, decoder, ids=(rank, world))
        collate = Collate(self.image_size)
        return DataLoader(examples, batch_size=self.hparams.batch_size, collate_fn=collate)

    def _map_loader(self, examples: ImageExamples, role: str) -> DataLoader:
        """Training shuffles (under DDP Lightning puts in its DistributedSampler); evaluation reads
        this rank's share of the split, no row repeated (nat_lightning.data.sharding)."""
        train = role == "train"
        sampler = None if train else self._eval_sampler(examples, role)
        collate = Collate(self.image_size)
        return DataLoader(
            examples, shuffle=train, sampler=sampler, collate_fn=collate, **self._loader_args()
        )

    def _eval_sampler(self, examples: ImageExamples, role: str) -> Sampler | None:
        """This rank's share of an evaluation split, no row repeated; None on one process."""
        hp, field = self.hparams, SPLIT_FIELDS[role]
        if role == "val" and hp.val_split not in self.all_splits:
            field = "val_fraction"  # held out of train
        elif role == "predict" and hp.predict_paths is not None:
            field = "predict_paths"
        return eval_sampler(examples, *self._rank_and_world(), field, hp[field])

    def _loader_args(self) -> dict:
        return {
            "batch_size": self.hparams.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else self._epoch

    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)


SPLIT_FIELDS = {"val": "val_split", "test": "test_split", "predict": "predict_split"}
RANGES = {  # argument -> (is it valid, what is expected)
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "shuffle_buffer": (lambda v: v >= 1, ">= 1"),
    "image_size": (lambda v: v is None or v >= 1, ">= 1 or None"),
    "crop_pct": (lambda v: v is None or 0 < v <= 1, "in (0, 1] or None"),
    "mean": (lambda v: v is None or len(v) == 3, "3 values (RGB) or None"),
    "std": (lambda v: v is None or (len(v) == 3 and min(v) > 0), "3 positive values or None"),
    "crop_scale": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "(low, high), 0 < low <= high <= 1",
    ),
    "hflip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "rand_augment_ops": (lambda v: v >= 0, ">= 0"),
    "rand_augment_magnitude": (lambda v: 0 <= v <= 10, "in [0, 10]"),
    "color_jitter": (lambda v: v >= 0, ">= 0"),
    "random_erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "num_workers": (lambda v: v is None or v >= 0, ">= 0 or None"),
    "max_skipped_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}
PREPROCESSING_TYPES = {
    "image_size": int,
    "crop_pct": float,
    "mean": lambda v: tuple(float(x) for x in v),
    "std": lambda v: tuple(float(x) for x in v),
}


def check_arguments(hp) -> None:
    """A ValueError for an argument out of range, naming it, its value and what is expected."""
    for name, (valid, expected) in RANGES.items():
        if not valid(hp[name]):
            raise ValueError(f"{name}={hp[name]!r}: expected {expected}")
    if hp.predict_split is not None and hp.predict_paths is not None:
        raise ValueError(
            f"predict_split={hp.predict_split!r} and predict_paths={hp.predict_paths!r}: "
            "expected at most one of them"
        )
