"""HFSegmentationDataModule: columns, sources (in-memory, parquet, an images/ + masks/ folder),
batches whose labels are the masks' ids, padded evaluation batches, corrupt pairs, size
mismatches, predict ids, streaming, preprocessing precedence, DDP evaluation shares."""

import json
import re
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage

from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFSegmentationDataModule, sharding

from .conftest import (
    BROKEN,
    CLASS_COLOURS,
    array_png,
    blocks,
    classes_of,
    mask_png,
    pairs,
    quiet_trainer,
)

PLAIN = {  # no augmentation, no resize of 32-px images, pixel_values * 255 the stored colours
    "crop_size": 32,
    "scale_range": (1.0, 1.0),
    "hflip": 0.0,
    "photometric_distortion": False,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "num_workers": 0,
    "batch_size": 4,
}
MASKS = [blocks(i) for i in range(10)]  # 32 x 32, classes 0..4


def labels_of(batch) -> list[np.ndarray]:
    return [labels.numpy() for labels in batch["labels"]]


def masks_seen(loader) -> list[bytes]:
    """The label maps of the real examples (not of a stream's padding batches), sorted."""
    real = (b for b in loader if b["num_examples"])
    return sorted(m.astype(np.uint8).tobytes() for b in real for m in labels_of(b))


def check_pixels_name_labels(batch) -> None:
    for pixels, labels in zip(batch["pixel_values"], batch["labels"]):
        image, mask = pixels.permute(1, 2, 0).numpy() * 255, labels.numpy()
        kept = mask != 255
        np.testing.assert_array_equal(classes_of(image)[kept], mask[kept])


def test_map_style_batches_carry_the_masks_ids():
    data = DatasetDict({"train": pairs(MASKS[:6]), "validation": pairs(MASKS[6:])})
    dm = HFSegmentationDataModule(data, **PLAIN)
    assert dm.num_classes == 5 and dm.id2label == dict(enumerate(("bg", "a", "b", "c", "d")))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["pixel_values"].shape == (4, 3, 32, 32)
        and batch["pixel_values"].dtype == torch.float32
    )
    assert batch["labels"].shape == (4, 32, 32) and batch["labels"].dtype == torch.int64
    assert "sizes" not in batch
    check_pixels_name_labels(batch)
    assert masks_seen(dm.train_dataloader()) == sorted(m.tobytes() for m in MASKS[:6])
    val = list(dm.val_dataloader())
    assert masks_seen(val) == sorted(m.tobytes() for m in MASKS[6:])
    assert val[0]["sizes"].tolist() == [[32, 32]] * 4 == val[0]["content"].tolist()


def test_columns_are_found_by_convention_or_given_by_name():
    data = pairs(MASKS[:4], image="pixel_values", mask="semantic_map")
    dm = HFSegmentationDataModule(data, val_split=None, **PLAIN)
    assert (dm.columns.image, dm.columns.mask) == ("pixel_values", "semantic_map")
    odd = pairs(MASKS[:4], image="photo", mask="seg")
    with pytest.raises(ValueError, match=r"no column named image or pixel_values; columns: "):
        _ = HFSegmentationDataModule(odd, **PLAIN).columns
    with pytest.raises(ValueError, match=r"no column named annotation or label or mask.*'photo'"):
        _ = HFSegmentationDataModule(odd, image_column="photo", **PLAIN).columns
    with pytest.raises(ValueError, match=r"mask_column='classes' .* is List; expected"):
        _ = HFSegmentationDataModule(odd, image_column="photo", mask_column="classes").columns
    dm = HFSegmentationDataModule(
        odd, image_column="photo", mask_column="seg", val_split=None, **PLAIN
    )
    dm.setup("fit")
    check_pixels_name_labels(next(iter(dm.train_dataloader())))


def test_a_palette_mask_column_gives_ids_and_reduce_labels_shifts_them():
    rows = pairs(MASKS[:4]).to_dict()
    palette = [v for k in range(256) for v in (255 - k, k, (7 * k) % 256)]
    rows["annotation"] = [{"bytes": mask_png(m, "P", palette), "path": None} for m in MASKS[:4]]
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    dm = HFSegmentationDataModule(data, val_split=None, **PLAIN)
    dm.setup("fit")
    assert masks_seen(dm.train_dataloader()) == sorted(m.tobytes() for m in MASKS[:4])
    reduced = HFSegmentationDataModule(data, val_split=None, reduce_labels=True, **PLAIN)
    reduced.setup("fit")
    expected = [np.where(m == 0, 255, m - 1).astype(np.uint8).tobytes() for m in MASKS[:4]]
    assert masks_seen(reduced.train_dataloader()) == sorted(expected)


def test_an_rgb_mask_stops_setup_naming_the_row_unless_mapped():
    rows = pairs(MASKS[:2]).to_dict()
    rows["annotation"] = [{"bytes": array_png(CLASS_COLOURS[m]), "path": None} for m in MASKS[:2]]
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    dm = HFSegmentationDataModule(data, val_split=None, **PLAIN)
    with pytest.raises(ValueError, match=r"mask 'annotation' of row 0 of split 'train' is a RGB"):
        dm.setup("fit")  # setup reads the masks (and a loader would stop the same way)
    colours = {",".join(map(str, c)): k for k, c in enumerate(CLASS_COLOURS.tolist())}
    mapped = HFSegmentationDataModule(data, val_split=None, color_map=colours, **PLAIN)
    mapped.setup("fit")
    assert masks_seen(mapped.train_dataloader()) == sorted(m.tobytes() for m in MASKS[:2])


def test_corrupt_images_and_masks_skip_their_pair_and_are_counted():
    rows = pairs(MASKS[:6]).to_dict()
    rows["image"][1] = {"bytes": BROKEN["truncated"](), "path": None}
    rows["annotation"][4] = {"bytes": b"", "path": "/data/masks/4.png"}
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    dm = HFSegmentationDataModule(
        data, predict_split="train", val_split=None, **{**PLAIN, "batch_size": 6}
    )
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["num_examples"] == 6 and batch["num_skipped"] == 2
    assert batch["skipped_names"] == ["row 1", "/data/masks/4.png"]
    assert batch["ids"] == [0, 1, 2, 3, 4, 5]
    assert batch["decoded"] == [True, False, True, True, False, True]
    expected = [MASKS[i] for i in (0, 2, 3, 5)]
    assert [m.tobytes() for m in labels_of(batch)] == [
        m.astype(np.int64).tobytes() for m in expected
    ]


def test_a_mask_of_another_size_is_resized_or_refused(tmp_path):
    rows = pairs(MASKS[:2]).to_dict()
    small = MASKS[0][::2, ::2]  # 16 x 16, each block 4 px
    rows["annotation"][0] = {"bytes": mask_png(small), "path": None}
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    dm = HFSegmentationDataModule(data, predict_split="train", val_split=None, **PLAIN)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    np.testing.assert_array_equal(batch["labels"][0].numpy(), np.kron(small, np.ones((2, 2))))
    strict = HFSegmentationDataModule(
        data, predict_split="train", val_split=None, mask_size_mismatch="error", **PLAIN
    )
    strict.setup("predict")
    with pytest.raises(
        ValueError,
        match=r"'annotation' of row 0 of split 'train': the image is 32x32 \(HxW\) but its mask is 16x16",
    ):
        next(iter(strict.predict_dataloader()))


def test_evaluation_batches_pad_to_the_largest_and_record_sizes(tmp_path):
    shapes = [(32, 48), (40, 32), (32, 32)]
    masks = [blocks(i, shape=s) for i, s in enumerate(shapes)]
    dm = HFSegmentationDataModule(pairs(masks), predict_split="train", val_split=None,
                                  **{**PLAIN, "eval_size": 32})  # fmt: skip
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["pixel_values"].shape == (3, 3, 64, 64)  # 32x48 -> 32x64, 40x32 -> 64x32
    assert batch["sizes"].tolist() == [[32, 48], [40, 32], [32, 32]]
    assert batch["content"].tolist() == [[32, 48], [40, 32], [32, 32]]  # short sides already 32
    for labels, mask, (h, w) in zip(batch["labels"], masks, shapes):
        np.testing.assert_array_equal(labels[:h, :w].numpy(), mask)
        assert (labels[h:, :] == 255).all() and (labels[:, w:] == 255).all()
    check_pixels_name_labels(batch)
    assert (batch["pixel_values"][1, :, 40:, :] == 0).all()


def test_an_images_and_masks_folder_with_split_subfolders(tmp_path):
    for split, ids in (("train", range(4)), ("validation", range(4, 6))):
        for i in ids:
            for kind, content in (("images", CLASS_COLOURS[MASKS[i]]), ("masks", MASKS[i])):
                (tmp_path / kind / split).mkdir(parents=True, exist_ok=True)
                PILImage.fromarray(content).save(tmp_path / kind / split / f"{i}.png")
    labels = tmp_path / "id2label.json"
    labels.write_text(json.dumps({str(k): n for k, n in enumerate("vwxyz")}))
    dm = HFSegmentationDataModule(str(tmp_path), labels_file=str(labels), **PLAIN)
    assert dm.id2label == dict(enumerate("vwxyz"))
    assert {role: split.size for role, split in dm.splits.items()} == {"train": 4, "val": 2}
    dm.setup("fit")
    assert masks_seen(dm.train_dataloader()) == sorted(m.tobytes() for m in MASKS[:4])
    assert masks_seen(dm.val_dataloader()) == sorted(m.tobytes() for m in MASKS[4:6])
    (tmp_path / "masks" / "train" / "3.png").rename(tmp_path / "masks" / "train" / "7.png")
    with pytest.raises(
        ValueError, match=r"images without a mask: \['3'\], masks without an image: \['7'\]"
    ):
        _ = HFSegmentationDataModule(str(tmp_path), labels_file=str(labels), **PLAIN).all_splits


def test_predict_paths_have_no_labels(tmp_path):
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.png"))
        PILImage.fromarray(CLASS_COLOURS[MASKS[i]]).save(files[-1])
    dm = HFSegmentationDataModule(pairs(MASKS[:4]), predict_paths=str(tmp_path), **PLAIN)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["ids"] == files and batch["decoded"] == [True] * 3
    assert (batch["labels"] == 255).all() and batch["sizes"].tolist() == [[32, 32]] * 3
    for pixels, mask in zip(batch["pixel_values"], MASKS):
        np.testing.assert_array_equal(classes_of(pixels.permute(1, 2, 0).numpy() * 255), mask)


def test_streaming_reads_the_same_pairs_as_map_style(tmp_path):
    data = DatasetDict({"train": pairs(MASKS[:7]), "validation": pairs(MASKS[7:])})
    dm = HFSegmentationDataModule(data, streaming=True, **{**PLAIN, "num_workers": 2})
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    assert masks_seen(batches) == sorted(m.tobytes() for m in MASKS[:7])
    assert masks_seen(dm.val_dataloader()) == sorted(m.tobytes() for m in MASKS[7:])


def test_streamed_evaluation_over_two_ranks_reads_each_pair_once_and_pads_with_ignored_pixels():
    data = DatasetDict({"train": pairs(MASKS[:3]), "validation": pairs(MASKS[3:8])})
    seen, padded = [], []
    for rank in range(2):  # 5 rows in 4 shards of 2, 1, 1, 1 rows: one rank has 2 rows, 1 batch
        dm = HFSegmentationDataModule(data, streaming=True, **{**PLAIN, "batch_size": 2})
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
        batches = list(dm.val_dataloader())
        assert len(batches) == 2
        seen += masks_seen(batches)
        padded += [b for b in batches if b["num_examples"] == 0]
    assert sorted(seen) == sorted(m.tobytes() for m in MASKS[3:8])
    assert len(padded) == 1
    assert (padded[0]["labels"] == 255).all() and padded[0]["labels"].shape == (2, 32, 32)
    assert padded[0]["sizes"].shape == padded[0]["content"].shape == (2, 2)


def test_evaluation_reads_each_pair_once_over_the_ranks(monkeypatch):
    monkeypatch.setattr(sharding, "in_process_group", lambda: True)
    data = DatasetDict({"train": pairs(MASKS[:4]), "validation": pairs(MASKS[:7])})
    seen = []
    for rank in range(3):
        dm = HFSegmentationDataModule(data, **PLAIN)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3, current_epoch=0)
        seen += masks_seen(dm.val_dataloader())
    assert sorted(seen) == sorted(m.tobytes() for m in MASKS[:7])  # 7 rows: 3 + 2 + 2, none twice


PREPROCESSOR = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "size": 12}
MODULE = {"image_size": 16, "crop_pct": 0.8, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}


def test_mean_and_std_come_from_the_argument_then_the_config_then_the_module(tmp_path):
    config = tmp_path / "preprocessor_config.json"
    config.write_text(json.dumps(PREPROCESSOR))
    data = pairs(MASKS[:2])
    built_in = HFSegmentationDataModule(data)
    assert built_in.preprocessing == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    # a classifier's preprocessing: its image_size and crop_pct mean nothing to segmentation
    assert built_in.resolve_preprocessing(MODULE) == {"mean": MODULE["mean"], "std": MODULE["std"]}
    from_config = HFSegmentationDataModule(
        data, preprocessor_config=str(config), std=(1.0, 2.0, 3.0)
    )
    assert from_config.resolve_preprocessing(MODULE) == {"mean": (0.5,) * 3, "std": (1.0, 2.0, 3.0)}
    assert from_config.hparams["mean"] == (0.5,) * 3
    with pytest.raises(ValueError, match=r"defaults has keys \['size'\]"):
        built_in.resolve_preprocessing({"size": 3})


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ({"mask_size_mismatch": "crop"}, "mask_size_mismatch='crop': expected 'resize' or 'error'"),
        ({"unnamed_classes": 300}, "unnamed_classes=300: expected in 1..255"),
        ({"scale_range": (2.0, 1.0)}, r"scale_range=\(2.0, 1.0\): expected \(low, high\)"),
        ({"crop_size": 0}, "crop_size=0: expected >= 1"),
        ({"color_map": {"#12345": 1}}, "color_map key '#12345'"),
    ],
)
def test_arguments_out_of_range(argument, message):
    with pytest.raises(ValueError, match=message):
        HFSegmentationDataModule(pairs(MASKS[:1]), **argument)


class Probe(L.LightningModule):
    """Trains a 1x1 convolution on the pixels; validation only reads its batches."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 5, 1)

    def training_step(self, batch, batch_idx):
        logits = self.head(batch["pixel_values"])
        return F.cross_entropy(logits, batch["labels"], ignore_index=255)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_run_reports_corrupt_pairs_and_stops_past_max_skipped_fraction():
    rows = pairs(MASKS[:8]).to_dict()
    for i in (2, 5):
        rows["annotation"][i] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}
    train = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    data = DatasetDict({"train": train, "validation": pairs(MASKS[8:])})
    dm = HFSegmentationDataModule(data, **PLAIN)
    trainer = quiet_trainer(callbacks=[SkippedImagesReport()], num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"2 of 8 image\(s\) in train .* could not be decoded"):
        trainer.fit(Probe(), datamodule=dm)
    assert trainer.callback_metrics["data/skipped_train"] == 2
    strict = HFSegmentationDataModule(data, max_skipped_fraction=0.2, **PLAIN)
    with pytest.raises(ValueError, match=r"2 of 8 images in train .*") as caught:
        quiet_trainer(callbacks=[SkippedImagesReport()]).fit(Probe(), datamodule=strict)
    named = re.findall(r"'row \d+'", str(caught.value))  # in the (shuffled) order read
    assert sorted(named) == ["'row 2'", "'row 5'"]


def test_without_a_validation_split_a_seeded_share_of_train_is_held_out():
    dm = HFSegmentationDataModule(pairs(MASKS), val_fraction=0.3, **PLAIN)
    assert {role: split.size for role, split in dm.splits.items()} == {"train": 7, "val": 3}
    dm.setup("fit")
    train, val = masks_seen(dm.train_dataloader()), masks_seen(dm.val_dataloader())
    assert sorted(train + val) == sorted(m.tobytes() for m in MASKS)
    again = HFSegmentationDataModule(pairs(MASKS), val_fraction=0.3, **PLAIN)
    again.setup("fit")
    assert masks_seen(again.val_dataloader()) == val
