"""HFPanopticDataModule: universal segmentation data (Mask2Former/OneFormer): per image, one
binary mask and one class per segment, and the panoptic and semantic maps the metrics need.

A batch (nat_lightning.batch's keys) holds:

- ``pixel_values`` (B, 3, H, W) float32, normalised as every data module's (padding 0);
- ``pixel_mask`` (B, H, W) int64: 1 where an image is, 0 its padding in the batch;
- ``mask_labels``: a list of B float32 tensors (N_i, H, W) of 0/1, one per segment of image i
  (N_i may be 0: every segment cropped away, or an unlabelled image); crowd segments and void
  pixels belong to no mask;
- ``class_labels``: a list of B int64 tensors (N_i,), the class of each mask;
- ``panoptic_map`` (B, H, W, 2) int64: (class, segment number) per pixel, as torchmetrics'
  PanopticQuality takes it; VOID_SEGMENT (-1) in both for void, crowd and padding pixels;
- ``labels`` (B, H, W) int64: the semantic map, the class per pixel, IGNORE_PIXEL (255) for void
  and padding, as HFSegmentationDataModule's ``labels`` (its metrics and streaming padding apply);
- evaluation and predict: ``sizes`` and ``content`` (B, 2) int64 as HFSegmentationDataModule's
  (each image's original (h, w), and its (h, w) once resized, before padding, at the top left);
- predict: ``ids`` and ``decoded`` as every data module's.

Examples whose image cannot be decoded, or whose annotation cannot be decoded or contradicts
itself or the classes (nat_lightning.data.panoptic), are dropped, counted and named per stage
(``tallies``, SkippedImagesReport), the reason in the name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import ClassVar, Literal

from datasets import ClassLabel, Dataset, DatasetDict, Features, LargeList, List, Value

from ..batch import IMAGENET_MEAN, IMAGENET_STD
from .base import RANGES, HFDataModule
from .columns import overview
from .joint_transforms import eval_resize
from .masks import IMAGE_NAMES, MASK_NAMES, class_names, find_column
from .panoptic import (
    KINDS,
    PanopticCollate,
    PanopticColumns,
    PanopticDecoder,
    eval_finish,
    train_pipeline,
)
from .panoptic_shapes import (
    PANOPTIC_SHAPES_DATASET,
    PANOPTIC_SHAPES_QUICKSTART,
    PANOPTIC_SHAPES_THINGS,
)
from .sources import Source, describe

log = logging.getLogger(__name__)
PANOPTIC_NAMES = ("panoptic", "panoptic_map", "annotation", "label", "segmentation")
SEGMENTS_NAMES = ("segments_info", "segments")
INSTANCE_MAP_NAMES = ("instances", "instance_map", "annotation", "label")
INSTANCE_CLASS_NAMES = ("instance_classes", "instance_labels", "classes")
UNIVERSAL_RANGES = {  # argument -> (is it valid, what is expected)
    **RANGES,
    "annotation_kind": (lambda v: v in ("auto", *KINDS), f"'auto' or one of {KINDS}"),
    "crop_size": (lambda v: v >= 1, ">= 1"),
    "eval_size": (lambda v: v is None or v >= 1, ">= 1 or None"),
    "scale_range": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "(low, high), 0 < low <= high"),
    "unnamed_classes": (lambda v: v is None or v >= 1, ">= 1 or None"),
}


def is_list(feature) -> bool:
    return isinstance(feature, (List, LargeList))


def is_segments_info(feature) -> bool:
    """A list of structs with ``id`` and ``category_id``: COCO-panoptic's segments_info."""
    inner = getattr(feature, "feature", None)
    return is_list(feature) and isinstance(inner, dict) and {"id", "category_id"} <= set(inner)


def is_class_list(feature) -> bool:
    """A list of class ids (ClassLabel or integers): an instance map's classes."""
    inner = getattr(feature, "feature", None)
    integer = isinstance(inner, Value) and inner.dtype.startswith(("int", "uint"))
    return is_list(feature) and (isinstance(inner, ClassLabel) or integer)


def annotation_kind(features: Features, given: str, segments: str | None) -> str:
    """``given`` unless 'auto': panoptic when a segments_info column exists, instance when a
    list of instance classes does, else semantic."""
    if given != "auto":
        return given
    found = [segments] if segments is not None else list(features)
    if any(is_segments_info(features.get(name)) for name in found):
        return "panoptic"
    names = [segments] if segments is not None else INSTANCE_CLASS_NAMES
    if any(is_class_list(features.get(name)) for name in names):
        return "instance"
    return "semantic"


def segments_column(features: Features, dataset: Source, kind: str, given: str | None):
    """The segments_info (panoptic) or instance classes (instance) column; None for semantic."""
    if kind == "semantic":
        return None
    valid, conventional = (
        (is_segments_info, SEGMENTS_NAMES)
        if kind == "panoptic"
        else (is_class_list, INSTANCE_CLASS_NAMES)
    )
    found = [given] if given is not None else [n for n in features if valid(features[n])]
    found = found or [n for n in conventional if n in features]
    if not found or found[0] not in features or not valid(features[found[0]]):
        expected = (
            "a list of {id, category_id, iscrowd}" if kind == "panoptic" else "a list of ints"
        )
        raise ValueError(
            f"segments_column={given!r}: dataset {describe(dataset)} has no {kind} segments "
            f"column ({expected}); columns: {overview(features)}"
        )
    return found[0]


def nested_names(feature) -> tuple[str, ...] | None:
    """The names of a ClassLabel inside a segments column (its category_id, or its items)."""
    inner = getattr(feature, "feature", None)
    label = inner.get("category_id") if isinstance(inner, dict) else inner
    return tuple(label.names) if isinstance(label, ClassLabel) else None


class HFPanopticDataModule(HFDataModule):
    """Images with panoptic, instance or semantic annotations (see nat_lightning.data.panoptic)
    from a Hub id, parquet/arrow files (a path, glob, list, or a folder of them named by split)
    or a ``datasets.Dataset``/``DatasetDict``; map-style by default, streamed with
    ``streaming=True``. Sources, splits, streaming, DDP and skip-and-count behave as in
    HFImageDataModule (same base).

    ``num_classes``, ``id2label``, ``thing_ids`` and ``stuff_ids`` are known right after
    ``__init__`` from the features: the ClassLabel of the segments column, else
    ``labels_file``/``unnamed_classes``. Preprocessing (``mean``, ``std``) as
    HFSegmentationDataModule's.
    """

    EMBEDDED_DATASET: ClassVar[str] = PANOPTIC_SHAPES_DATASET
    PREPROCESSING: ClassVar[dict] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    RANGES: ClassVar[dict] = UNIVERSAL_RANGES

    @classmethod
    def embedded(cls, **overrides) -> HFPanopticDataModule:
        """The embedded panoptic shapes with their quickstart settings
        (panoptic_shapes.PANOPTIC_SHAPES_QUICKSTART), ``overrides`` on top."""
        return cls(**{"dataset": None, **PANOPTIC_SHAPES_QUICKSTART, **overrides})

    def __init__(
        self,
        # also HFDataModule's: here as the one positional argument, its None the panoptic shapes
        dataset: str | list[str] | Dataset | DatasetDict | None = None,
        *,
        annotation_kind: Literal["auto", "panoptic", "instance", "semantic"] = "auto",
        annotation_column: str | None = None,
        segments_column: str | None = None,
        thing_classes: Sequence[str | int] | None = None,
        labels_file: str | None = None,
        unnamed_classes: int | None = None,
        reduce_labels: bool = False,
        crop_size: int = 512,
        scale_range: tuple[float, float] = (0.1, 2.0),
        photometric_distortion: bool = False,
        eval_size: int | None = None,
        batch_size: int = 16,
        **kwargs,
    ):
        """The universal segmentation arguments; ``kwargs`` are HFDataModule's.

        Args:
            dataset: a Hub id, parquet/arrow file(s) or a folder of them named by split, or a
                datasets.Dataset/DatasetDict. None: the embedded panoptic shapes.
            annotation_kind: panoptic (an RGB id PNG + segments_info), instance (an instance-id
                map + a list of instance classes), semantic (a class-id map); auto: panoptic
                when a segments_info column exists, instance when an instance classes column
                (instance_classes, instance_labels, classes) does, else semantic.
            annotation_column: the annotation image column; None: the first of panoptic,
                panoptic_map, annotation, label, segmentation (panoptic); instances,
                instance_map, annotation, label (instance); annotation, label, mask,
                segmentation_mask, semantic_map (semantic).
            segments_column: the segments_info (panoptic) or instance classes (instance) column;
                None: the first column of that type.
            thing_classes: the classes (names or ids) that are things, the rest stuff; None:
                the embedded shapes' own (PANOPTIC_SHAPES_THINGS); else every class a thing for
                panoptic and instance annotations, every class stuff for semantic ones.
            labels_file: a JSON of id -> name or a list of names, where the dataset declares
                no ClassLabel.
            unnamed_classes: classes when nothing names them (called class_i).
            reduce_labels: semantic maps with ADE20K's convention: id 0 ("other") becomes
                ignored, every other id drops by one (classes count after it).
            crop_size: side of the square training crops.
            scale_range: (low, high) of the training scale: the longer side becomes crop_size
                times a ratio drawn from it (Mask2Former's large-scale jitter is (0.1, 2.0)).
            photometric_distortion: mmseg's brightness, contrast, saturation and hue jitter.
            eval_size: shorter side of evaluation and predict images (then padded to a
                multiple of 32); None: crop_size.
            batch_size: examples per batch and process.
            kwargs: the arguments every data module takes: see HFDataModule.
        """
        super().__init__(dataset=dataset, batch_size=batch_size, **kwargs)
        _ = self.thing_ids if thing_classes is not None else None  # a wrong name fails here

    @property
    def crop_size(self) -> int:
        return self.hparams.crop_size

    @property
    def eval_size(self) -> int:
        return self.hparams.eval_size or self.hparams.crop_size

    # -- what the data is: resolved lazily, without decoding images ----------------------------

    @cached_property
    def columns(self) -> PanopticColumns:
        """Image, annotation and segments columns, the annotation kind and the class names."""
        hp = self.hparams
        features = self._features("a dataset with an image column and an annotation column")
        image = find_column(features, self.dataset, hp.image_column, "image_column", IMAGE_NAMES)
        kind = annotation_kind(features, hp.annotation_kind, hp.segments_column)
        segments = segments_column(features, self.dataset, kind, hp.segments_column)
        conventional = {"panoptic": PANOPTIC_NAMES, "instance": INSTANCE_MAP_NAMES}
        field, given = "annotation_column", hp.annotation_column
        names = conventional.get(kind, MASK_NAMES)
        annotation = find_column(features, self.dataset, given, field, names)
        found = nested_names(features[segments]) if segments else None
        if found is None or hp.labels_file is not None:
            found = class_names(features, hp.labels_file, hp.unnamed_classes, self.dataset)
        if hp.reduce_labels and kind != "semantic":
            raise ValueError(
                f"reduce_labels=True with annotation_kind {kind!r}: it applies to semantic maps "
                "(ADE20K's 0 = other); panoptic and instance annotations list their classes"
            )
        return PanopticColumns(image, annotation, segments, kind, found, hp.reduce_labels)

    @cached_property
    def thing_ids(self) -> tuple[int, ...]:
        """The class ids that are things (``thing_classes``; see its default)."""
        given, names = self.hparams.thing_classes, self.columns.names
        if given is None and self.dataset == PANOPTIC_SHAPES_DATASET:
            given = PANOPTIC_SHAPES_THINGS  # the embedded data's, from its description
        if given is None:
            default = self.columns.kind != "semantic"
            return tuple(range(len(names))) if default else ()
        ids = []
        for value in given:
            if isinstance(value, str) and value in names:
                ids.append(names.index(value))
            elif isinstance(value, int) and 0 <= value < len(names):
                ids.append(value)
            else:
                raise ValueError(
                    f"thing_classes={list(given)!r}: {value!r} is no class; expected names or "
                    f"ids of the {len(names)} classes {list(names)}"
                )
        return tuple(sorted(set(ids)))

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        """The class ids that are stuff: every class not a thing."""
        return tuple(i for i in range(self.num_classes) if i not in self.thing_ids)

    def _kept_columns(self) -> tuple[list[str | None], list[str]]:
        columns = self.columns
        return [columns.image, columns.annotation, columns.segments], [
            columns.image,
            columns.annotation,
        ]

    # -- decoding and batching ----------------------------------------------------------------

    def _decoder(self, role: str, columns: PanopticColumns | None = None) -> PanopticDecoder:
        hp = self.hparams
        rows = None if columns is not None or role not in self.splits else self._rows(role)
        columns = columns or self.columns
        if role != "train":
            finish = eval_finish(self.mean, self.std)
            return PanopticDecoder(columns, eval_resize(self.eval_size), finish, rows=rows)
        pipeline = train_pipeline(
            hp.crop_size,
            self.mean,
            self.std,
            scale_range=tuple(hp.scale_range),
            hflip=hp.hflip,
            photometric=hp.photometric_distortion,
        )
        return PanopticDecoder(columns, pipeline, rows=rows)

    def _rows(self, role: str) -> str:
        """What the role's row indices count in, for names: the split, where its rows are the
        dataset's; the split's name alone where they were held out of it."""
        name, val_split = self.splits[role].name, self.hparams.val_split
        held_out = role in ("train", "val") and (
            self.hparams.folds is not None
            or (val_split is not None and val_split not in self.all_splits)
        )
        return repr(name) if held_out else f"split {name!r}"

    def _unlabelled_decoder(self) -> PanopticDecoder:
        columns = PanopticColumns("image", None, None, self.columns.kind, self.columns.names)
        return self._decoder("predict", columns)

    def _collate(self, role: str) -> PanopticCollate:
        train = role == "train"
        return PanopticCollate(self.crop_size if train else self.eval_size, evaluation=not train)


def panoptic_shapes_datamodule(**overrides) -> HFPanopticDataModule:
    """An HFPanopticDataModule on the embedded panoptic shapes with the quickstart settings,
    ``overrides`` on top."""
    return HFPanopticDataModule.embedded(**overrides)
