"""HFImageDataModule: image classification data from any Hugging Face dataset source."""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path

import datasets
import lightning as L
import torch
from datasets import Image
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from .digits import DIGITS_PARQUET
from .examples import ImageExamples, StreamingExamples, collate
from .sources import Columns, describe, find_columns, load_source, pick_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, read_preprocessor_config, train_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class HFImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str | datasets.Dataset | datasets.DatasetDict | None = None,
        config_name: str | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str | None = None,
        val_fraction: float = 0.1,
        image_column: str | None = None,
        label_column: str | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        image_size: int = 224,
        crop_pct: float = 0.875,
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
    ):
        """Args:
        dataset: a Hub id, a local folder (imagefolder or saved dataset), parquet/arrow file(s) or
            a glob, or a datasets.Dataset/DatasetDict. None: the embedded digits (DIGITS_PARQUET).
        config_name: the Hub dataset's configuration.
        train_split: split to train on.
        val_split: split to validate on; carved from train (``val_fraction``, seeded) if missing.
        test_split: split for ``test``; None disables it.
        val_fraction: share of train held out when there is no ``val_split``.
        image_column: image column; found from the features (datasets.Image) when None.
        label_column: label column; found from the features (ClassLabel) when None.
        streaming: stream (IterableDataset, shuffle buffer, DDP/worker sharding) instead of map-style.
        shuffle_buffer: examples in the streaming shuffle buffer.
        image_size: training and evaluation resolution.
        crop_pct: evaluation resizes the short side to image_size / crop_pct, then centre-crops.
        crop_scale: RandomResizedCrop area range.
        hflip: horizontal flip probability.
        rand_augment_ops: RandAugment operations per image; 0 disables it.
        rand_augment_magnitude: RandAugment magnitude on 0..10.
        color_jitter: brightness/contrast/saturation jitter; 0 disables it.
        random_erasing: random erasing probability.
        mean: normalisation mean; ImageNet's, or the preprocessor config's, when None.
        std: normalisation std; ImageNet's, or the preprocessor config's, when None.
        preprocessor_config: a checkpoint's preprocessor_config.json (or its folder) for mean/std/crop_pct.
        batch_size: examples per batch and process.
        num_workers: DataLoader workers; min(4, CPUs) when None.
        pin_memory: pin host memory; True when CUDA is available and None is given.
        persistent_workers: keep workers between epochs; True when there are workers and None is given.
        seed: seed of the validation carve-out and the streaming shuffle.
        predict_split: split to run ``predict`` on.
        predict_paths: a folder of images, or a list of image files, to run ``predict`` on.
        """
        super().__init__()
        self.save_hyperparameters(ignore=[] if dataset is None or isinstance(dataset, str) else ["dataset"])
        self.dataset = DIGITS_PARQUET if dataset is None else dataset
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction=}")
        if preprocessor_config is not None:
            pre = read_preprocessor_config(preprocessor_config)
            mean, std = mean or pre.get("image_mean"), std or pre.get("image_std")
            crop_pct = pre.get("crop_pct", crop_pct) or crop_pct
        self.mean, self.std, self.crop_pct = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD), crop_pct
        self.hparams.update(mean=self.mean, std=self.std, crop_pct=crop_pct)
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = self.num_workers > 0 if persistent_workers is None else persistent_workers
        self.skipped: dict[str, int] = {}
        self._data: dict[str, torch.utils.data.Dataset] = {}

    # -- what the data is: loaded lazily, without decoding images ------------------------------

    @cached_property
    def _source(self):
        return load_source(self.dataset, self.hparams.config_name, self.hparams.streaming)

    @cached_property
    def splits(self) -> dict:
        """train/val(/test) HF splits, images left undecoded; val carved from train if missing."""
        hp, source = self.hparams, self._source
        train = pick_split(source, hp.train_split, self.dataset, "train_split")
        out = {"train": train}
        if hp.val_split in source:
            out["val"] = source[hp.val_split]
        elif hp.streaming:
            n_val = math.ceil(hp.val_fraction * _num_examples(train, self.dataset, hp.train_split))
            out["train"], out["val"] = train.skip(n_val), train.take(n_val)
        else:
            stratify = self.columns.label if isinstance(train.features[self.columns.label], datasets.ClassLabel) else None
            parts = train.train_test_split(test_size=hp.val_fraction, seed=hp.seed, stratify_by_column=stratify)
            out["train"], out["val"] = parts["train"], parts["test"]
        if hp.test_split is not None:
            out["test"] = pick_split(source, hp.test_split, self.dataset, "test_split")
        for name, split in out.items():
            if not hp.streaming and len(split) == 0:
                raise ValueError(f"the {name} split of dataset {describe(self.dataset)} is empty")
            out[name] = split.cast_column(self.columns.image, Image(decode=False))
        return out

    @cached_property
    def columns(self) -> Columns:
        train = pick_split(self._source, self.hparams.train_split, self.dataset, "train_split")
        values = None if self.hparams.streaming else (lambda: train[self.hparams.label_column or "label"])
        if not self.hparams.streaming and len(train) == 0:
            raise ValueError(f"the train split {self.hparams.train_split!r} of dataset {describe(self.dataset)} is empty")
        return find_columns(train.features, self.dataset, self.hparams.image_column, self.hparams.label_column,
                            values if self.hparams.label_column or "label" in train.features else None)

    @property
    def num_classes(self) -> int:
        return len(self.columns.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.columns.names))

    # -- Lightning hooks -----------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        train_tf = train_transform(hp.image_size, self.mean, self.std, hp.crop_scale, hp.hflip, hp.rand_augment_ops,
                                   hp.rand_augment_magnitude, hp.color_jitter, hp.random_erasing)
        eval_tf = eval_transform(hp.image_size, self.mean, self.std, self.crop_pct)
        if stage in (None, "fit", "validate", "test"):
            for name in ("train", "val", "test"):
                if name in self.splits:
                    tf, random = (train_tf, True) if name == "train" else (eval_tf, False)
                    self._data[name] = self._examples(self.splits[name], tf, random, shuffle=name == "train")
        if stage in (None, "predict"):
            self._data["predict"] = self._predict_examples(eval_tf)

    def _examples(self, split, transform, random: bool, shuffle: bool):
        if not self.hparams.streaming:
            return ImageExamples(split, self.columns, transform, random)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        workers = max(1, self.num_workers)
        n = _num_examples(split, self.dataset, "split")
        if isinstance(split, datasets.Dataset):  # local data: one shard per rank and worker
            split = split.to_iterable_dataset(num_shards=min(n, world * workers))
        if shuffle:
            split = split.shuffle(seed=self.hparams.seed, buffer_size=self.hparams.shuffle_buffer)
        split = split_dataset_by_node(split, rank=rank, world_size=world)
        quota = math.ceil(n / (world * workers))
        return StreamingExamples(split, self.columns, transform, random, quota, self.num_workers,
                                 self.hparams.batch_size, self.hparams.image_size)

    def _predict_examples(self, transform):
        hp = self.hparams
        if hp.predict_paths is not None:
            files = _image_files(hp.predict_paths)
            split = datasets.Dataset.from_dict({"image": files}).cast_column("image", Image(decode=False))
            columns = Columns("image", "label", self.columns.names if self._has_source() else [], False)
            return ImageExamples(split, columns, transform, random=False, ids=files)
        if hp.predict_split is not None:
            split = pick_split(self._source, hp.predict_split, self.dataset, "predict_split")
            return ImageExamples(split.cast_column(self.columns.image, Image(decode=False)), self.columns, transform,
                                 random=False)
        raise ValueError("predict needs data: set data.predict_paths (a folder or list of images) "
                         "or data.predict_split (a split name)")

    def _has_source(self) -> bool:
        try:
            return bool(self.columns)
        except (ValueError, FileNotFoundError):
            return False

    def set_epoch(self, epoch: int) -> None:
        """Re-shuffle streaming data for ``epoch`` (called by nat_lightning's DataEpochs callback)."""
        data = self._data.get("train")
        if isinstance(data, StreamingExamples):
            data.set_epoch(epoch)

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        if name not in self._data:
            self.setup("predict" if name == "predict" else "fit")
        data = self._data[name]
        return DataLoader(
            data,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle and not isinstance(data, StreamingExamples),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        if self.hparams.test_split is None:
            raise ValueError("test needs data.test_split; available splits: " + str(sorted(self._source)))
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("predict")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        skipped = int(batch.pop("num_skipped", 0))
        if skipped:
            stage = self.trainer.state.stage.value if self.trainer and self.trainer.state.stage else "unknown"
            self.skipped[stage] = self.skipped.get(stage, 0) + skipped
        return batch


def _num_examples(split, dataset, name: str) -> int:
    if isinstance(split, datasets.Dataset):
        return len(split)
    info = split.info.splits and split.info.splits.get(split.split if split.split else "train")
    if not info or not info.num_examples:
        raise ValueError(f"streaming dataset {describe(dataset)} does not declare how many examples its {name} "
                         "has; it is needed to balance DDP ranks (use streaming=False)")
    return info.num_examples


def _image_files(paths) -> list[str]:
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(str(p))
        else:
            raise FileNotFoundError(f"predict_paths entry {str(p)!r} does not exist")
    if not files:
        raise ValueError(f"predict_paths={paths} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files
