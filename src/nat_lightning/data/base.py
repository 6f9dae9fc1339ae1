"""What every nat_lightning DataModule shares: sources and splits, preprocessing precedence,
map-style and streaming loaders under DDP, and the per-stage tallies of undecodable examples.

A task's DataModule (HFImageDataModule, HFSegmentationDataModule) subclasses HFDataModule and says
only what differs: its own ``__init__`` arguments (the shared ones, declared and documented once
in ``HFDataModule.__init__``, it passes on with ``**kwargs``), its embedded dataset, its columns
and classes, how a row is decoded and transformed, how examples are collated into a batch, and
which preprocessing keys it uses. What it must define is abstract (``abc``).
"""

from __future__ import annotations

import abc
import logging
import os
from functools import cached_property
from typing import ClassVar, Literal

import lightning as L
import torch
from datasets import Dataset, DatasetDict, Features, Image
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Sampler

from .balanced import BalancedSampler
from .images import ImageExamples, SkipTally
from .sharding import eval_sampler
from .sources import (
    Split,
    Splits,
    carve_fold,
    carve_validation,
    describe,
    hub_features,
    image_files,
    is_hub_id,
    load_splits,
    pick_split,
)
from .streaming import EvenLoader, StreamingExamples, rank_stream
from .transforms import BUILT_IN_PREPROCESSING, config_preprocessing

log = logging.getLogger(__name__)
BUILT_IN = "the built-in default"  # the source of a preprocessing value nothing else gave
SPLIT_FIELDS = {"val": "val_split", "test": "test_split", "predict": "predict_split"}
RANGES = {  # argument every DataModule has -> (is it valid, what is expected)
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "shuffle_buffer": (lambda v: v >= 1, ">= 1"),
    "hflip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "mean": (lambda v: v is None or len(v) == 3, "3 values (RGB) or None"),
    "std": (lambda v: v is None or (len(v) == 3 and min(v) > 0), "3 positive values or None"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "num_workers": (lambda v: v is None or v >= 0, ">= 0 or None"),
    "max_skipped_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}
PREPROCESSING_RANGES = {
    "image_size": (lambda v: v is None or v >= 1, ">= 1 or None"),
    "crop_pct": (lambda v: v is None or 0 < v <= 1, "in (0, 1] or None"),
    "mean": RANGES["mean"],
    "std": RANGES["std"],
}
PREPROCESSING_TYPES = {
    "image_size": int,
    "crop_pct": float,
    "mean": lambda v: tuple(float(x) for x in v),
    "std": lambda v: tuple(float(x) for x in v),
}


def check_arguments(hp, ranges: dict) -> None:
    """A ValueError for an argument out of range, naming it, its value and what is expected."""
    for name, (valid, expected) in ranges.items():
        if not valid(hp[name]):
            raise ValueError(f"{name}={hp[name]!r}: expected {expected}")
    if hp.predict_split is not None and hp.predict_paths is not None:
        raise ValueError(
            f"predict_split={hp.predict_split!r} and predict_paths={hp.predict_paths!r}: "
            "expected at most one of them"
        )


class HFDataModule(L.LightningDataModule, abc.ABC):
    """The shared machinery; see HFImageDataModule for what it does with a dataset.

    A subclass sets EMBEDDED_DATASET (read when ``dataset`` is None), PREPROCESSING (its
    preprocessing keys and their built-in values) and RANGES, declares its own ``__init__``
    arguments (and those whose defaults differ), passes the rest on with ``**kwargs``, and
    implements the abstract methods: ``embedded``, ``columns``, ``_kept_columns``, ``_decoder``,
    ``_unlabelled_decoder`` and ``_collate``.
    """

    EMBEDDED_DATASET: ClassVar[str]  # the dataset read when ``dataset`` is None
    PREPROCESSING: ClassVar[dict] = BUILT_IN_PREPROCESSING
    RANGES: ClassVar[dict] = RANGES

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # (ABCMeta computes __abstractmethods__ only after this hook: look at the methods)
        abstract = any(
            getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in dir(cls)
        )
        if not (abstract or hasattr(cls, "EMBEDDED_DATASET")):
            raise TypeError(f"data module {cls.__name__} must set EMBEDDED_DATASET")

    def __init__(
        self,
        dataset: str | list[str] | Dataset | DatasetDict | None = None,
        config_name: str | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        val_fraction: float = 0.1,
        image_column: str | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        sampler: Literal["random", "balanced"] = "random",
        hflip: float = 0.5,
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
        folds: int | None = None,
        fold: int = 0,
    ):
        """The arguments every data module takes; a subclass passes them on (``**kwargs``).

        Args:
            dataset: a Hub id, a local folder (the subclass's layout, or parquet/arrow files named
                by split), parquet/arrow file(s) as a path, glob or list, or a
                datasets.Dataset/DatasetDict. None: the embedded dataset (EMBEDDED_DATASET).
            config_name: the Hub dataset's configuration (subset).
            train_split: split to train on.
            val_split: split to validate on; if the dataset has none, ``val_fraction`` of train is
                held out (seeded, stratified by class where labels are classes; not possible for
                Hub streams). None: no validation.
            test_split: split for ``test``; None: none.
            val_fraction: share of train held out when ``val_split`` does not exist.
            image_column: image column; None: the datasets.Image column (classification), the first
                of image, pixel_values (segmentation).
            streaming: read an IterableDataset (shuffle buffer, DDP/worker shards) instead of
                map-style.
            shuffle_buffer: examples in the streaming shuffle buffer.
            sampler: how training draws examples: ``random`` (shuffled, or a stream's shuffle
                buffer); ``balanced``: every class equally often, drawn with replacement, seeded by
                seed + epoch, an equal share per DDP rank (map-style classification data; see
                data.balanced).
            hflip: probability of a horizontal flip.
            mean: normalisation mean (RGB, 0..1 scale); None: the preprocessor_config's, else the
                LightningModule's, else ImageNet's.
            std: normalisation std; None: the preprocessor_config's, else the LightningModule's,
                else ImageNet's.
            preprocessor_config: a transformers preprocessor_config.json (or its folder); its values
                for this data module's preprocessing keys (image_mean and image_std; size and
                crop_pct for classification) fill the arguments that are None.
            batch_size: examples per batch and process.
            num_workers: DataLoader worker processes; min(4, CPU count) when None.
            pin_memory: pin batches in page-locked memory; None: True when CUDA is available.
            persistent_workers: keep workers alive between epochs; None: True when there are
                workers.
            seed: seed of the held-out validation split and of the streaming shuffle.
            predict_split: split to run ``predict`` on; ids are its row indices.
            predict_paths: a folder of images or a list of image files to run ``predict`` on; ids
                are the paths.
            cache_dir: where ``datasets`` caches downloads and Arrow files; its default cache when
                None.
            max_skipped_fraction: a stage's epoch (train, validate, test, predict) whose share of
                undecodable examples exceeds this stops the run with an error naming them (a wrong
                root, a missing codec); 1.0 never stops.
            folds: K-fold cross-validation: the training split is dealt into ``folds`` parts
                (seeded by ``seed``, stratified by class where labels are classes) and part
                ``fold`` validates, in place of ``val_split``; None: no folds.
                ``nat-lightning cross_validate --folds K ...`` runs every fold.
            fold: the part that validates, 0 <= fold < folds.
        """
        super().__init__()
        # this frame's arguments and the subclass's (its **kwargs); an in-memory dataset has no
        # place in a checkpoint: it is recorded by its description below
        self.save_hyperparameters(ignore=["dataset"])
        hp = self.hparams
        check_arguments(hp, self.RANGES)
        if sampler == "balanced" and streaming:
            raise ValueError(
                "sampler='balanced' with streaming=True: a stream is read in order through a "
                "shuffle buffer and cannot draw by class; use streaming=False, or sampler='random' "
                "with the model's class_weights"
            )
        if folds is not None and not (folds >= 2 and 0 <= fold < folds):
            raise ValueError(
                f"folds={folds}, fold={fold}: expected folds >= 2 and 0 <= fold < folds "
                f"(fold {fold} of folds {folds} does not exist)"
            )
        in_memory = not (dataset is None or isinstance(dataset, (str, list)))
        hp["dataset"] = describe(dataset) if in_memory else dataset
        self.dataset = self.EMBEDDED_DATASET if dataset is None else dataset
        given = {key: hp.get(key) for key in self.PREPROCESSING}  # the arguments
        self._arguments = {key: value for key, value in given.items() if value is not None}
        config = preprocessor_config
        self._from_config = config_preprocessing(config) if config is not None else {}
        self._preprocessing: dict = {}  # key -> value, resolved
        self._source: dict[str, str] = {}  # key -> where its value came from
        self.resolve_preprocessing()  # provisional: setup() may fill built-in values from the model
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        persistent = persistent_workers
        self.persistent_workers = self.num_workers > 0 if persistent is None else persistent
        self.tallies: dict[str, SkipTally] = {}  # per trainer stage, until reported
        self._epoch = 0  # used when no trainer is attached (set_epoch)

    @classmethod
    @abc.abstractmethod
    def embedded(cls, **overrides) -> HFDataModule:
        """The embedded dataset with its quickstart settings, ``overrides`` on top: the data of
        a task that is given none (NatTask's default data)."""

    # -- preprocessing: arguments > preprocessor_config > the LightningModule's > built-in ------

    def resolve_preprocessing(self, defaults: dict | None = None) -> dict:
        """The preprocessing values (the keys of PREPROCESSING), each from the first that gives
        it: the argument, the ``preprocessor_config`` file, ``defaults`` (``setup`` passes the
        LightningModule's ``preprocessing``), the built-in value. Keys of ``defaults`` that this
        DataModule does not use (a classifier's ``image_size`` for segmentation) are ignored.

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
            (BUILT_IN, self.PREPROCESSING),
        )
        for key in self.PREPROCESSING:
            if self._source.get(key, BUILT_IN) != BUILT_IN:
                continue  # an earlier source gave it
            source, value = next((s, v[key]) for s, v in sources if v.get(key) is not None)
            valid, expected = PREPROCESSING_RANGES[key]
            if not valid(value):
                raise ValueError(f"{key}={value!r} from {source}: expected {expected}")
            self._preprocessing[key] = PREPROCESSING_TYPES[key](value)
            self._source[key] = source
        self.hparams.update(self._preprocessing)
        return dict(self._preprocessing)

    @property
    def preprocessing(self) -> dict:
        """The resolved preprocessing values, what a LightningModule records and offers back."""
        return dict(self._preprocessing)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self._preprocessing["mean"]

    @property
    def std(self) -> tuple[float, float, float]:
        return self._preprocessing["std"]

    # -- what the data is: resolved lazily, without decoding images ----------------------------

    @property
    @abc.abstractmethod
    def columns(self):
        """The columns the examples are read from and ``names``, the class names (read from
        the features metadata on first access: no image is decoded)."""

    @property
    def num_classes(self) -> int:
        return len(self.columns.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.columns.names))

    # -- the splits: resolved lazily, without decoding images ----------------------------------

    @cached_property
    def all_splits(self) -> Splits:
        """Every split of the dataset, as ``datasets`` loads it (streamed only for Hub ids)."""
        return self._load_splits()

    def _load_splits(self) -> Splits:
        hp = self.hparams
        return load_splits(self.dataset, hp.config_name, hp.streaming, hp.cache_dir)

    def _features(self, expected: str) -> Features:
        """The dataset's declared features (column types), without decoding an image: a Hub
        dataset's metadata (no download when LightningCLI reads ``num_classes`` at
        instantiation), else the train split's. ``expected`` says what the error expects."""
        hp = self.hparams
        features = None
        if is_hub_id(self.dataset) and not hp.streaming:
            features = hub_features(self.dataset, hp.config_name, hp.cache_dir)
        if features is None:
            train = pick_split(self.all_splits, hp.train_split, self.dataset, "train_split")
            features = train.data.features
        if features is None:
            raise ValueError(
                f"dataset {describe(self.dataset)} does not declare its features (column types); "
                f"expected {expected}"
            )
        return features

    @cached_property
    def splits(self) -> dict[str, Split]:
        """The splits by role (train, val, test, predict), images left undecoded."""
        hp, available = self.hparams, self.all_splits
        train = pick_split(available, hp.train_split, self.dataset, "train_split")
        roles = {"train": train}
        if hp.folds is not None:  # cross-validation: a part of train validates, not val_split
            roles["train"], roles["val"] = carve_fold(
                train, hp.folds, hp.fold, hp.seed, self._stratify_column(), self.dataset
            )
        elif hp.val_split is not None and hp.val_split in available:
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
                train, hp.val_fraction, hp.seed, self._stratify_column(), self.dataset
            )
        if hp.test_split is not None:
            roles["test"] = pick_split(available, hp.test_split, self.dataset, "test_split")
        if hp.predict_split is not None:
            roles["predict"] = pick_split(
                available, hp.predict_split, self.dataset, "predict_split"
            )
        return {role: self._undecoded(split) for role, split in roles.items()}

    def _stratify_column(self) -> str | None:
        """The column a held-out validation split is stratified by (a ClassLabel), if any."""
        return None

    def _undecoded(self, split: Split) -> Split:
        """Only the columns ``_kept_columns`` names (those a split has), the image ones (the
        first ``images``) as stored bytes/paths, decoded by us."""
        names = split.data.column_names
        kept, images = self._kept_columns()
        kept = [c for c in kept if c and (names is None or c in names)]
        data = split.data.select_columns(kept)
        for column in images:
            if names is None or column in names:
                data = data.cast_column(column, Image(decode=False))
        return Split(split.name, data, split.size)

    @abc.abstractmethod
    def _kept_columns(self) -> tuple[list[str | None], list[str]]:
        """(the columns the examples need, those of them that hold images)."""

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
            examples = ImageExamples(rows, self._unlabelled_decoder(), ids=files)
            return self._map_loader(examples, "predict")
        return self._loader("predict")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Move the batch's decode counts into ``tallies`` under the trainer's stage."""
        stage = self.trainer.state.stage if self.trainer is not None else None
        tally = SkipTally() if stage is None else self.tallies.setdefault(stage.value, SkipTally())
        tally.take(batch)
        return batch

    # -- what a subclass decides ---------------------------------------------------------------

    @abc.abstractmethod
    def _decoder(self, role: str):
        """A row (a dict), its id and its index -> an example or an Undecodable."""

    @abc.abstractmethod
    def _unlabelled_decoder(self):
        """The decoder of ``predict_paths`` rows: an ``image`` column of files, nothing else."""

    @abc.abstractmethod
    def _collate(self, role: str):
        """Examples -> a batch; a ``padding(last, batch_size)`` method gives a batch that counts
        no example, for ranks whose stream ran out (nat_lightning.data.streaming)."""

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

    def _loader(self, role: str) -> DataLoader:
        split, train = self._split(role), role == "train"
        decoder = self._decoder(role)
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
        return EvenLoader(
            examples, num_batches, self._current_epoch, self._collate(role), **self._loader_args()
        )

    def _predict_stream(self, split: Split, decoder) -> DataLoader:
        """A Hub stream read by one process per rank, taking every world-th row: row k of rank r
        is row r + k * world of the split, its id."""
        rank, world = self._rank_and_world()
        stream = split.data
        if world > 1:
            stream = split_dataset_by_node(stream, rank, world, strategy="examples")
        examples = StreamingExamples(stream, decoder, ids=(rank, world))
        collate = self._collate("predict")
        return DataLoader(examples, batch_size=self.hparams.batch_size, collate_fn=collate)

    def _map_loader(self, examples: ImageExamples, role: str) -> DataLoader:
        """Training shuffles (under DDP Lightning puts in its DistributedSampler); evaluation reads
        this rank's share of the split, no row repeated (nat_lightning.data.sharding)."""
        train = role == "train"
        sampler = self._train_sampler() if train else self._eval_sampler(examples, role)
        return DataLoader(
            examples,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=self._collate(role),
            **self._loader_args(),
        )

    def _train_sampler(self) -> BalancedSampler | None:
        """None (shuffled by the loader) unless ``sampler='balanced'``."""
        if self.hparams.sampler != "balanced":
            return None
        rank, world = self._rank_and_world()
        return BalancedSampler(self.train_classes(), world, rank, self.hparams.seed)

    def train_classes(self):
        """The class id of every training example, in row order (below 0: no label), for
        ``sampler='balanced'``; a data module whose examples have no single class refuses it."""
        raise ValueError(
            f"sampler='balanced' draws examples by their class, and {type(self).__name__}'s "
            "examples have no single class; use sampler='random' and the model's class_weights"
        )

    def _training_rows(self, counted: str) -> Dataset:
        """The training split's rows, to count its ``counted`` (labels, pixels) before training;
        a ValueError for a Hub stream, which is not read ahead."""
        split = self._split("train")
        if not isinstance(split.data, Dataset):
            raise ValueError(  # noqa: TRY004 - a setting to change, not a wrong type
                f"the training split {split.name!r} of dataset {describe(self.dataset)} is a stream "
                f"(a Hub dataset with streaming=True), which is not read ahead to count its "
                f"{counted}: give the model's class_weights as a list of one weight per class (not "
                "auto), or use streaming=False"
            )
        return split.data

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
