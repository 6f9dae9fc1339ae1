"""HFPanopticDataModule: each annotation kind decoded against masks built first (the oracle),
transforms that keep segment ids, inconsistent annotations skipped and named, the kind and the
classes from the columns, and the embedded data's batches."""

import io
import re

import lightning as L
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from torchmetrics.detection import PanopticQuality

from nat_lightning.batch import IGNORE_PIXEL, VOID_SEGMENT
from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFPanopticDataModule
from nat_lightning.data.panoptic import Segments, targets, train_pipeline

from .conftest import quiet_trainer

SIDE = 32
NAMES = ("cat", "dog", "grass", "sky")
PLAIN = {  # no augmentation, no resize or padding of 32-px images
    "crop_size": SIDE,
    "scale_range": (1.0, 1.0),
    "hflip": 0.0,
    "num_workers": 0,
    "batch_size": 4,
    "val_split": None,
}
# the oracle: segments as (class, crowd, region) drawn first, later ones on top
SEGMENTS = [
    (3, False, (slice(0, 12), slice(0, SIDE))),  # sky
    (2, False, (slice(12, SIDE), slice(0, SIDE))),  # grass
    (0, False, (slice(4, 16), slice(2, 10))),  # a cat
    (0, False, (slice(6, 20), slice(10, 18))),  # another cat, touching the first
    (1, False, (slice(20, 28), slice(20, 30))),  # a dog
    (1, True, (slice(24, 32), slice(0, 6))),  # a crowd of dogs
]
PANOPTIC_IDS = [5, 300, 70_001, 70_002, 1_000_000, 9]  # R, G and B channels all used


def png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def segment_index() -> np.ndarray:
    """(SIDE, SIDE): k + 1 where segment k shows, 0 void (the bottom-right corner)."""
    index = np.zeros((SIDE, SIDE), dtype=np.int64)
    for k, (_, _, region) in enumerate(SEGMENTS):
        index[region] = k + 1
    index[30:, 30:] = 0
    return index


def visible() -> list[tuple[int, bool, np.ndarray]]:
    index = segment_index()
    return [(c, crowd, index == k + 1) for k, (c, crowd, _) in enumerate(SEGMENTS)]


def image() -> dict:
    return png(np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def rgb_of(ids: np.ndarray) -> np.ndarray:
    """COCO-panoptic's encoding: id = R + 256 G + 256^2 B."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def panoptic_rows(rows: list[tuple], category=ClassLabel(names=NAMES)) -> Dataset:
    segment = {
        "id": Value("int64"),
        "category_id": category,
        "iscrowd": Value("int8"),
    }
    features = Features({"image": Image(), "panoptic": Image(), "segments_info": List(segment)})
    data = {"image": [], "panoptic": [], "segments_info": []}
    for ids, info in rows:  # ids: an (H, W) array, or the path of its PNG
        data["image"].append(image())
        stored = png(rgb_of(ids)) if isinstance(ids, np.ndarray) else {"bytes": None, "path": ids}
        data["panoptic"].append(stored)
        data["segments_info"].append(info)
    return Dataset.from_dict(data, features=features)


def panoptic_example() -> tuple[np.ndarray, list]:
    lookup = np.array([0, *PANOPTIC_IDS])
    info = [
        {"id": i, "category_id": c, "iscrowd": int(crowd)}
        for i, (c, crowd, _) in zip(PANOPTIC_IDS, SEGMENTS)
    ]
    return lookup[segment_index()], info


def as_set(masks: torch.Tensor, classes: torch.Tensor) -> set:
    return {(int(c), m.numpy().astype(bool).tobytes()) for m, c in zip(masks, classes)}


def first_batch(dm: HFPanopticDataModule, role: str = "train") -> dict:
    dm.setup("fit" if role == "train" else "validate")
    return next(iter(dm.train_dataloader() if role == "train" else dm.val_dataloader()))


def test_panoptic_annotations_give_one_mask_per_segment_crowd_left_out():
    dm = HFPanopticDataModule(panoptic_rows([panoptic_example()]), **PLAIN)
    assert dm.columns.kind == "panoptic" and dm.id2label == dict(enumerate(NAMES))
    batch = first_batch(dm)
    expected = {(c, m.tobytes()) for c, crowd, m in visible() if not crowd}
    assert as_set(batch["mask_labels"][0], batch["class_labels"][0]) == expected
    assert batch["mask_labels"][0].dtype == torch.float32
    assert batch["class_labels"][0].dtype == torch.int64


def test_evaluation_maps_mark_void_and_crowd():
    data = DatasetDict({"train": panoptic_rows([panoptic_example()])})
    dm = HFPanopticDataModule(data, **{**PLAIN, "val_split": "train"})
    batch = first_batch(dm, "val")
    panoptic, semantic = batch["panoptic_map"][0], batch["labels"][0]
    for k, (c, crowd, mask) in enumerate(visible()):
        expected = (VOID_SEGMENT, VOID_SEGMENT) if crowd else (c, k + 1)
        assert (panoptic[torch.as_tensor(mask)] == torch.tensor(expected)).all()
        assert (semantic[torch.as_tensor(mask)] == c).all()  # a crowd keeps its class
    assert (panoptic[30:, 30:] == VOID_SEGMENT).all() and (semantic[30:, 30:] == IGNORE_PIXEL).all()
    assert batch["sizes"].tolist() == [[SIDE, SIDE]] and batch["pixel_mask"].all()


def instance_rows(ids: np.ndarray, classes: list[int]) -> Dataset:
    features = Features(
        {"image": Image(), "instances": Image(), "instance_classes": List(ClassLabel(names=NAMES))}
    )
    data = {
        "image": [image()],
        "instances": [png(ids.astype(np.uint8))],
        "instance_classes": [classes],
    }
    return Dataset.from_dict(data, features=features)


def test_instance_maps_give_one_mask_per_instance():
    index = segment_index()
    classes = [c for c, _, _ in SEGMENTS]
    dm = HFPanopticDataModule(instance_rows(index, classes), **PLAIN)
    assert dm.columns.kind == "instance" and dm.columns.annotation == "instances"
    batch = first_batch(dm)
    expected = {(c, m.tobytes()) for c, _, m in visible()}  # no crowd flag in instance maps
    assert as_set(batch["mask_labels"][0], batch["class_labels"][0]) == expected


def test_semantic_maps_give_one_mask_per_class_present():
    classes = np.full((SIDE, SIDE), IGNORE_PIXEL, dtype=np.uint8)
    for c, _, mask in visible():
        classes[mask] = c
    features = Features({"image": Image(), "annotation": Image()})
    rows = Dataset.from_dict({"image": [image()], "annotation": [png(classes)]}, features=features)
    dm = HFPanopticDataModule(rows, labels_file=None, unnamed_classes=4, **PLAIN)
    assert dm.columns.kind == "semantic" and dm.thing_ids == () and dm.stuff_ids == (0, 1, 2, 3)
    batch = first_batch(dm)
    expected = {(c, (classes == c).tobytes()) for c in range(4)}
    assert as_set(batch["mask_labels"][0], batch["class_labels"][0]) == expected


def test_reduce_labels_ignores_ade20k_other_and_shifts_the_classes():
    classes = np.zeros((SIDE, SIDE), dtype=np.uint8)  # 0: "other"
    for c, _, mask in visible():
        classes[mask] = c + 1
    features = Features({"image": Image(), "annotation": Image()})
    rows = Dataset.from_dict({"image": [image()], "annotation": [png(classes)]}, features=features)
    dm = HFPanopticDataModule(rows, unnamed_classes=4, reduce_labels=True, **PLAIN)
    batch = first_batch(dm)
    expected = {(c, (classes == c + 1).tobytes()) for c in range(4)}
    assert as_set(batch["mask_labels"][0], batch["class_labels"][0]) == expected
    assert ((batch["labels"][0] == IGNORE_PIXEL) == torch.from_numpy(classes == 0)).all()
    with pytest.raises(ValueError, match=r"reduce_labels=True with annotation_kind 'panoptic'"):
        _ = HFPanopticDataModule(panoptic_rows([panoptic_example()]), reduce_labels=True).columns


def test_the_kind_can_be_forced_and_things_named():
    rows = instance_rows(segment_index(), [c for c, _, _ in SEGMENTS])
    dm = HFPanopticDataModule(
        rows, annotation_kind="semantic", annotation_column="instances", **PLAIN
    )  # the instance ids read as classes: 0..6, of which 4..6 are no class
    assert dm.columns.kind == "semantic" and dm.num_classes == 4 and dm.thing_ids == ()
    batch = first_batch(dm)
    assert batch["num_skipped"] == 1 and "class ids [4, 5, 6] outside the 4 classes" in str(
        batch["skipped_names"]
    )
    dm = HFPanopticDataModule(rows, thing_classes=["cat", 1], **PLAIN)
    assert dm.thing_ids == (0, 1) and dm.stuff_ids == (2, 3)
    with pytest.raises(ValueError, match=r"thing_classes=\['cow'\]: 'cow' is no class"):
        HFPanopticDataModule(rows, thing_classes=["cow"], **PLAIN)
    with pytest.raises(ValueError, match=r"annotation_kind='boxes': expected 'auto' or one of"):
        HFPanopticDataModule(rows, annotation_kind="boxes", **PLAIN)


def test_large_scale_jitter_keeps_segment_ids():
    rng = np.random.default_rng(0)
    index = rng.integers(0, 400, (8, 8)).repeat(8, 0).repeat(8, 1).astype(np.int32)  # 64 x 64
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pipeline = train_pipeline(48, (0.5,) * 3, (0.5,) * 3, scale_range=(0.1, 2.0), hflip=0.5)
    for _ in range(20):
        out = pipeline(image=pixels, mask=index)
        assert out["image"].shape == (3, 48, 48) and out["mask"].shape == (48, 48)
        assert set(out["mask"].unique().tolist()) <= set(np.unique(index).tolist()) | {0}


def test_segments_cropped_away_give_no_mask_and_an_empty_image_is_valid():
    segments = Segments(np.array([[1, 1], [2, 0]]), np.array([3, 1]), np.array([False, False]))
    out = targets(np.array([[1, 1], [0, 0]]), segments)  # segment 2 cropped away
    assert out["class_labels"].tolist() == [3] and out["mask_labels"].shape == (1, 2, 2)
    out = targets(np.zeros((2, 2), dtype=np.int32), segments)
    assert out["mask_labels"].shape == (0, 2, 2) and out["class_labels"].shape == (0,)
    assert (out["labels"] == IGNORE_PIXEL).all()


def test_inconsistent_annotations_are_skipped_counted_and_named(tmp_path):
    ids, info = panoptic_example()
    bad = {
        "missing": (ids, info + [{"id": 77, "category_id": 0, "iscrowd": 0}]),
        "category": (ids, [{**s, "category_id": 9} if s["id"] == 5 else s for s in info]),
        "unlisted": (ids, info[1:]),
        "size": (ids[:16], [s for s in info if s["id"] in ids[:16]]),  # consistent, too small
    }
    rows = [panoptic_example()]
    for name, (bad_ids, bad_info) in bad.items():
        path = tmp_path / f"{name}.png"
        PILImage.fromarray(rgb_of(bad_ids)).save(path)
        rows.append((str(path), bad_info))
    # plain integer categories (a ClassLabel refuses 9), counted by unnamed_classes
    data = panoptic_rows(rows, category=Value("int64"))
    dm = HFPanopticDataModule(data, unnamed_classes=4, **{**PLAIN, "batch_size": 8})
    batch = first_batch(dm)
    assert batch["num_examples"] == 5 and batch["num_skipped"] == 4
    assert len(batch["mask_labels"]) == 1 and batch["pixel_values"].shape[0] == 1
    reasons = {
        "missing": r"segments_info ids \[77\] missing from the PNG",
        "category": r"category_id \[9\] outside the 4 classes",
        "unlisted": r"PNG segment ids \[5\] not in segments_info",
        "size": r"the annotation is 16x32 \(HxW\) but its image 32x32",
    }
    names = sorted(batch["skipped_names"])
    for name, reason in sorted(reasons.items()):
        found = [n for n in names if f"{name}.png" in n]
        assert len(found) == 1 and str(tmp_path) in found[0], names
        assert re.search(reason, found[0]), found[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_embedded_data_gives_batches_of_the_documented_shapes(workers):
    dm = HFPanopticDataModule.embedded(num_workers=workers, batch_size=4)
    assert dm.id2label == {0: "circle", 1: "square", 2: "triangle", 3: "sky", 4: "ground"}
    assert dm.thing_ids == (0, 1, 2) and dm.stuff_ids == (3, 4)
    for role in ("train", "val"):
        batch = first_batch(dm, role)
        assert batch["pixel_values"].shape == (4, 3, 64, 64)
        assert batch["pixel_values"].dtype == torch.float32
        assert batch["pixel_mask"].shape == (4, 64, 64)
        assert batch["panoptic_map"].shape == (4, 64, 64, 2)
        assert batch["labels"].shape == (4, 64, 64)
        assert batch["panoptic_map"].dtype == batch["labels"].dtype == torch.int64
        assert len(batch["mask_labels"]) == len(batch["class_labels"]) == 4
        for masks, classes in zip(batch["mask_labels"], batch["class_labels"]):
            assert masks.shape[1:] == (64, 64) and masks.shape[0] == classes.shape[0]
            assert masks.dtype == torch.float32 and classes.dtype == torch.int64
            assert set(masks.unique().tolist()) <= {0.0, 1.0} and (masks.sum(0) <= 1).all()
            assert ((classes >= 0) & (classes < 5)).all()
    assert batch["sizes"].tolist() == [[64, 64]] * 4
    things, stuffs = set(dm.thing_ids), set(dm.stuff_ids)
    quality = PanopticQuality(things=things, stuffs=stuffs, allow_unknown_preds_category=True)
    assert quality(batch["panoptic_map"], batch["panoptic_map"]) == 1.0  # the metric takes it


def test_the_no_argument_constructor_reads_the_embedded_data():
    dm = HFPanopticDataModule()
    assert dm.num_classes == 5 and dm.thing_ids == (0, 1, 2)
    assert {role: split.size for role, split in dm.splits.items()} == {"train": 320, "val": 64}


class Probe(L.LightningModule):
    """Checks that the lists of masks and classes reach the step on the module's device."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        assert len(batch["mask_labels"]) == len(batch["class_labels"]) == len(batch["pixel_values"])
        return (batch["pixel_values"].mean() - self.weight) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_run_reports_inconsistent_annotations_and_stops_past_max_skipped_fraction():
    ids, info = panoptic_example()
    rows = [(ids, info)] * 6 + [(ids, info[1:])] * 2  # two with an unlisted PNG id
    data = panoptic_rows(rows)
    dm = HFPanopticDataModule(data, **PLAIN)
    trainer = quiet_trainer(callbacks=[SkippedImagesReport()], num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"2 of 8 image\(s\) in train .* were skipped"):
        trainer.fit(Probe(), datamodule=dm)
    assert trainer.callback_metrics["data/skipped_train"] == 2
    strict = HFPanopticDataModule(data, max_skipped_fraction=0.2, **PLAIN)
    with pytest.raises(ValueError, match=r"2 of 8 images in train .*not in segments_info"):
        quiet_trainer(callbacks=[SkippedImagesReport()]).fit(Probe(), datamodule=strict)


def test_streaming_and_predict_read_the_same_examples():
    data = panoptic_rows([panoptic_example()] * 3)
    plain = HFPanopticDataModule(data, **PLAIN)
    streamed = HFPanopticDataModule(data, streaming=True, **PLAIN)
    batches = [first_batch(dm) for dm in (plain, streamed)]
    assert [len(b["mask_labels"]) for b in batches] == [3, 3]
    for one, other in zip(*(b["mask_labels"] for b in batches)):
        assert torch.equal(one, other)
    dm = HFPanopticDataModule(data, predict_split="train", **PLAIN)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["ids"] == [0, 1, 2] and batch["sizes"].tolist() == [[SIDE, SIDE]] * 3
