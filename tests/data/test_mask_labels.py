"""Mask labels from the file to the loss and the metrics: a mask holding ids that are no class
stops the run naming its file, the ids and the fixes (nat_lightning.data.masks, pairs), wherever
it is read: at setup or in a DataLoader worker; a split with no labelled pixel stops setup
(nat_lightning.data.segmentation); errors name the file, and a row only where it is the
dataset's; and the segmenter where every pixel, or a class, is missing from the labels
(nat_lightning.tasks.segmenter, seg_metrics): a zero loss that backpropagates, an error at the
end of a validation epoch without labels, one warning naming the classes it never saw."""

import io
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from nat_lightning import NatConfig, NatSegmenter
from nat_lightning.data import HFSegmentationDataModule
from nat_lightning.data.masks import MaskLabelError, MaskModeError
from nat_lightning.data.pairs import scanned_rows
from nat_lightning.data.segmentation import SCANNED_MASKS
from nat_lightning.data.sources import Split
from nat_lightning.tasks.seg_metrics import segmentation_metrics

from .conftest import CLASS_COLOURS, array_png, blocks, mask_png, pairs, quiet_trainer

PLAIN = {  # no augmentation, 32-px images, one process
    "crop_size": 32,
    "scale_range": (1.0, 1.0),
    "hflip": 0.0,
    "photometric_distortion": False,
    "num_workers": 0,
    "batch_size": 4,
}
MASKS = [blocks(i) for i in range(6)]  # 32 x 32, classes 0..4


def jpeg(ids: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(ids.astype(np.uint8), mode="L").save(buffer, format="JPEG")
    return buffer.getvalue()


def as_read(data: bytes) -> np.ndarray:
    """What any decoder reads back from an encoded mask: the oracle for lossy files."""
    return np.asarray(PILImage.open(io.BytesIO(data)))


def folder(root: Path, splits: dict[str, list], suffix: str = ".png") -> Path:
    """``images/<split>/<i>.png`` (grey) and ``masks/<split>/<i><suffix>``: each mask an (H, W)
    array of ids saved as "L" (a JPEG for ``suffix=".jpg"``), or the bytes to write."""
    for split, masks in splits.items():
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(masks):
            PILImage.new("RGB", (32, 32), (90, 90, 90)).save(
                root / "images" / split / f"{i:03d}.png"
            )
            data = (
                mask if isinstance(mask, bytes) else (jpeg if suffix == ".jpg" else mask_png)(mask)
            )
            (root / "masks" / split / f"{i:03d}{suffix}").write_bytes(data)
    return root


def labelled(masks: list[np.ndarray]) -> Dataset:
    """``pairs`` of masks holding any ids (uint8 "L" or 16-bit PNGs), their images grey."""
    grey = pairs([np.zeros_like(m, dtype=np.uint8) for m in masks])
    rows = grey.to_dict()
    rows["annotation"] = [{"bytes": array_png(m), "path": None} for m in masks]
    return Dataset.from_dict(rows, features=grey.features)


def with_ids(mask: np.ndarray, *ids: int) -> np.ndarray:
    """``mask`` with ``ids`` written into its first pixels (uint16 where an id exceeds 255)."""
    out = mask.astype(np.uint16 if max(ids) > 255 else np.uint8)
    out.reshape(-1)[: len(ids)] = ids
    return out


# -- ids that are no class -------------------------------------------------------------------


def test_ids_outside_the_classes_stop_setup_naming_the_file_the_ids_and_the_fixes(tmp_path):
    bad = with_ids(MASKS[2], 200, 9, 255, 9)  # 255 is ignored, not an error
    root = folder(tmp_path, {"train": [MASKS[0], MASKS[1], bad], "validation": MASKS[3:5]})
    dm = HFSegmentationDataModule(str(root), unnamed_classes=5, **PLAIN)
    with pytest.raises(MaskLabelError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert f"mask file {str(root / 'masks' / 'train' / '002.png')!r} holds ids [9, 200] " in message
    assert "5 classes (0..4) nor 255 (ignored)" in message
    for fix in (
        "ids up to 200 need unnamed_classes=201",
        "reduce_labels=True",
        "color_map=",
        "lossless PNGs",
    ):
        assert fix in message
    assert "row" not in message  # a folder's rows are its files
    # the fix it names is enough
    HFSegmentationDataModule(str(root), unnamed_classes=201, **PLAIN).setup("fit")


def test_a_dataloader_worker_raises_the_same_error(tmp_path):
    """The loaders check every mask they read, not only those setup reads: in a worker process
    the error keeps its type, and its message reaches the main process."""
    root = folder(tmp_path, {"train": MASKS[:2], "validation": [MASKS[2], with_ids(MASKS[3], 7)]})
    # not persistent: the worker ends with its iterator, not in a later test (a 5 s join)
    one_worker = {**PLAIN, "num_workers": 1, "persistent_workers": False}
    dm = HFSegmentationDataModule(str(root), unnamed_classes=5, **one_worker)
    with pytest.raises(MaskLabelError, match=r"DataLoader worker process 0") as caught:
        next(iter(dm.val_dataloader()))  # no setup: the loader alone
    assert f"{str(root / 'masks' / 'validation' / '001.png')!r} holds ids [7]" in str(caught.value)


def test_many_and_16_bit_ids_are_listed_sorted_and_a_few():
    wide = with_ids(MASKS[0], *range(300, 290, -1), 5)  # a 16-bit PNG
    dm = HFSegmentationDataModule(labelled([MASKS[1], wide]), val_split=None, **PLAIN)
    listed = re.escape("[5, 291, 292, 293, 294, 295, 296, 297, ... (11 ids)]")
    with pytest.raises(
        MaskLabelError,
        match=rf"'annotation' of row 1 of split 'train' holds ids {listed}.*at most 255",
    ):
        dm.setup("fit")


def test_ids_are_checked_after_reduce_labels_and_the_color_map():
    reduced = HFSegmentationDataModule(labelled([with_ids(MASKS[0], 7)]), val_split=None,
                                       reduce_labels=True, **PLAIN)  # fmt: skip
    with pytest.raises(MaskLabelError, match=r"ids \[6\] \(after reduce_labels\)") as caught:
        reduced.setup("fit")  # 7 - 1: a sixth class
    assert "reduce_labels=True if" not in str(caught.value)  # already on
    rows = pairs(MASKS[:1]).to_dict()
    rows["annotation"] = [{"bytes": array_png(CLASS_COLOURS[MASKS[0]]), "path": None}]
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    colours = {",".join(map(str, c)): k + 3 for k, c in enumerate(CLASS_COLOURS.tolist())}
    mapped = HFSegmentationDataModule(data, val_split=None, color_map=colours, **PLAIN)
    with pytest.raises(MaskLabelError, match=r"\(after color_map\).*a color_map whose ids are"):
        mapped.setup("fit")


def test_predict_reads_masks_without_checking_them():
    data = labelled([with_ids(MASKS[0], 9), MASKS[1]])
    dm = HFSegmentationDataModule(data, predict_split="train", val_split=None, **PLAIN)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["labels"][0].reshape(-1)[0] == 9 and batch["decoded"] == [True, True]


def test_a_jpeg_mask_says_masks_must_be_lossless_pngs(tmp_path):
    ids = np.full((32, 32), 255, np.uint8)  # an ignored border (as VOC's) around class 4
    ids[5:21, 7:19] = 4
    found = set(np.unique(as_read(jpeg(ids))).tolist()) - {0, 1, 2, 3, 4, 255}
    assert found  # what the compression invents, read back by PIL
    root = folder(tmp_path, {"train": [ids, ids], "validation": [ids]}, suffix=".jpg")
    dm = HFSegmentationDataModule(str(root), unnamed_classes=5, **PLAIN)
    with pytest.raises(MaskLabelError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert "000.jpg' holds ids" in message and str(sorted(found)[:3])[1:-1] in message
    assert (
        "likely fixes: the mask is a JPEG" in message and "masks must be lossless PNGs" in message
    )


def test_a_jpeg_mask_whose_ids_are_classes_is_warned_about_once(tmp_path):
    ids = np.zeros((32, 32), np.uint8)
    ids[5:21, 7:19] = 2  # the compression makes 1s and 3s at the edges: classes too
    read = as_read(jpeg(ids))
    assert set(np.unique(read).tolist()) <= set(range(5)) and (read != ids).any()  # silent
    root = folder(tmp_path, {"train": [ids, ids, ids], "validation": [ids]}, suffix=".jpg")
    dm = HFSegmentationDataModule(str(root), unnamed_classes=5, **PLAIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("validate")  # reads the one validation mask
        batches = list(
            HFSegmentationDataModule(str(root), unnamed_classes=5, **PLAIN).train_dataloader()
        )
    lossy = [str(w.message) for w in caught if "is a JPEG" in str(w.message)]
    assert len(lossy) == 2, lossy  # one per decoder: setup's, then the train loader's
    assert "validation/000.jpg" in lossy[0] and "masks must be lossless PNGs" in lossy[0]
    assert sum(len(b["labels"]) for b in batches) == 3  # a warning, not an error


# -- errors name the file, and the row where it is the dataset's ------------------------------


def test_errors_name_the_file_and_a_row_only_where_it_is_the_datasets(tmp_path):
    rgb = array_png(CLASS_COLOURS[MASKS[0]])
    # a folder whose validation is held out of train: rows of that share are no one's
    root = folder(tmp_path / "f", {"": [rgb] * 10})
    dm = HFSegmentationDataModule(str(root), unnamed_classes=5, val_fraction=0.5, **PLAIN)
    with pytest.raises(
        MaskModeError, match=r"mask file '.*/masks/\d{3}\.png' is a RGB image"
    ) as caught:
        dm.setup("fit")
    assert "row" not in str(caught.value)
    # stored bytes with a file name (as Hub parquet files keep them): the file, then its row
    rows = pairs(MASKS[:3]).to_dict()
    rows["annotation"][2] = {"bytes": rgb, "path": "009.png"}
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    with pytest.raises(MaskModeError, match=r"mask file '009.png' \(row 2 of split 'train'\) is"):
        HFSegmentationDataModule(data, val_split=None, **PLAIN).setup("fit")
    # bytes alone in a held-out share: its row, of that share
    rows["annotation"] = [{"bytes": rgb, "path": None}] * 3
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    with pytest.raises(MaskModeError, match=r"'annotation' of row \d of 'train minus val_frac"):
        HFSegmentationDataModule(data, val_fraction=0.34, **PLAIN).setup("fit")


# -- splits with no labelled pixel -------------------------------------------------------------


def test_a_split_of_only_ignored_pixels_stops_setup_naming_it(tmp_path):
    empty = np.full((32, 32), 255, np.uint8)
    root = folder(tmp_path, {"train": MASKS[:3], "validation": [empty, empty]})
    dm = HFSegmentationDataModule(str(root), unnamed_classes=5, **PLAIN)
    with pytest.raises(
        ValueError,
        match=r"the validation split 'validation' of dataset .* no labelled pixel: every pixel of its 2 masks is 255",
    ):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"validation split 'validation'"):
        dm.setup("validate")
    tested = HFSegmentationDataModule(
        str(root), unnamed_classes=5, test_split="validation", **PLAIN
    )
    with pytest.raises(ValueError, match=r"the test split 'validation'"):
        tested.setup("test")


def test_reduce_labels_on_masks_whose_0_is_a_class_is_named_as_the_cause():
    binary = [np.where(m > 2, 255, 0).astype(np.uint8) for m in MASKS[:4]]  # 0 a class, 255 ignored
    data = DatasetDict({"train": labelled(binary[:2]), "validation": labelled(binary[2:])})
    HFSegmentationDataModule(data, **PLAIN).setup("fit")
    dm = HFSegmentationDataModule(data, reduce_labels=True, **PLAIN)
    with pytest.raises(ValueError, match=r"training split 'train'.*causes: reduce_labels=True on"):
        dm.setup("fit")


def test_a_color_map_that_matches_no_colour_is_named_with_the_masks_colours():
    rows = pairs(MASKS[:2]).to_dict()
    rows["annotation"] = [{"bytes": array_png(CLASS_COLOURS[m]), "path": None} for m in MASKS[:2]]
    data = Dataset.from_dict(rows, features=pairs(MASKS[:1]).features)
    dm = HFSegmentationDataModule(data, val_split=None, color_map={"#010203": 0}, **PLAIN)
    with pytest.raises(
        ValueError, match=r"a color_map that matches none.*'#c8c8c8'"
    ):  # (200, 200, 200)
        dm.setup("fit")


def test_setup_reads_a_bounded_even_sample_of_a_large_split_and_no_stream():
    n = 3 * SCANNED_MASKS
    rows = scanned_rows(n, SCANNED_MASKS)
    assert (
        len(rows) == SCANNED_MASKS
        and rows == sorted(set(rows))
        and (rows[0], rows[-1]) == (0, n - 1)
    )
    assert max(np.diff(rows)) <= math.ceil((n - 1) / (SCANNED_MASKS - 1))
    assert scanned_rows(5, SCANNED_MASKS) == [0, 1, 2, 3, 4]
    masks = [MASKS[i % 6][:8, :8] for i in range(n)]
    unread = min(set(range(n)) - set(rows))
    for row, stops in ((unread, False), (rows[5], True)):
        bad = list(masks)
        bad[row] = with_ids(masks[row], 9)
        dm = HFSegmentationDataModule(labelled(bad), val_split=None, **PLAIN)
        if stops:
            with pytest.raises(MaskLabelError, match=rf"row {row} of split 'train'"):
                dm.setup("fit")
        else:
            dm.setup("fit")  # not read here: the loaders will stop on it
    empty = DatasetDict({"train": labelled([np.full((32, 32), 255, np.uint8)] * 2)})
    local = HFSegmentationDataModule(empty, val_split=None, streaming=True, **PLAIN)
    with pytest.raises(ValueError, match="training split 'train'"):
        local.setup("fit")  # local data streams from Arrow files: rows are read at will
    hub = HFSegmentationDataModule(empty, val_split=None, streaming=True, **PLAIN)
    stream = empty["train"].to_iterable_dataset()  # as a Hub stream arrives
    hub.__dict__["splits"] = {"train": Split("train", stream, None)}
    hub.setup("fit")  # not read ahead (the segmenter checks its epochs)


# -- the segmenter: losses and metrics without labels ------------------------------------------

TINY = NatConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], kernel_size=3,
                 mlp_ratio=1.0, drop_path_rate=0.0)  # fmt: skip
NAMES = {0: "sky", 1: "road", 2: "boat"}


def segmenter() -> NatSegmenter:
    torch.manual_seed(0)
    return NatSegmenter(model=TINY, id2label=NAMES, hidden_size=16, auxiliary_channels=8)


def halves(n: int, ignored: bool = False) -> list[dict]:
    """Images whose red channel says the class of each pixel: left half sky, right half road
    (never a boat); every pixel 255 when ``ignored``."""
    labels = torch.zeros(n, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = 1
    images = torch.randn(n, 3, 32, 32) * 0.1
    images[:, 0] += labels
    if ignored:
        labels[:] = 255
    return [{"pixel_values": images[i], "labels": labels[i]} for i in range(n)]


def test_the_loss_of_a_batch_without_labels_is_a_zero_that_backpropagates():
    network = segmenter().network.train()
    assert network.auxiliary_head is not None
    images = torch.randn(2, 3, 32, 32)
    loss = network(images, torch.full((2, 32, 32), 255)).loss
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    for head in (network.decode_head, network.auxiliary_head):
        assert head.classifier.weight.grad is not None and not head.classifier.weight.grad.any()
    labels = torch.full((2, 32, 32), 255)
    labels[0, :4] = 2
    out = network(images, labels)  # both heads' mean cross-entropy over the labelled pixels
    expected = F.cross_entropy(out.logits, labels, ignore_index=255) + 0.4 * F.cross_entropy(
        out.auxiliary_logits, labels, ignore_index=255
    )
    torch.testing.assert_close(out.loss, expected)


def test_a_validation_epoch_without_labelled_pixels_is_an_error_after_the_sanity_check(tmp_path):
    model = segmenter()
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=1,
                            default_root_dir=str(tmp_path))  # fmt: skip
    train = DataLoader(halves(4), batch_size=2)
    val = DataLoader(halves(4, ignored=True), batch_size=2)
    with pytest.raises(ValueError, match=r"the validation epoch read no labelled pixel .*val/miou"):
        trainer.fit(model, train, val)
    assert trainer.global_step == 2  # the sanity check passed: it reads too little to judge


def test_a_class_absent_from_validation_is_named_once_and_miou_stays_finite(tmp_path):
    model = segmenter()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=2,
                            default_root_dir=str(tmp_path))  # fmt: skip
    loader = DataLoader(halves(4), batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader, loader)
    absent = [str(w.message) for w in caught if "never occur" in str(w.message)]
    assert len(absent) == 1 and "1 of 3 classes" in absent[0] and "['boat']" in absent[0], absent
    logged = trainer.callback_metrics
    assert trainer.current_epoch == 2 and math.isfinite(logged["val/miou"])
    assert math.isfinite(logged["val/loss"]) and "val/pixels" not in logged


def test_miou_is_never_nan_while_a_pixel_is_labelled_and_pixels_count_each_class():
    metrics = segmentation_metrics(NAMES)
    labels = torch.full((2, 4, 4), 255)
    labels[0, 0, :3] = torch.tensor([1, 1, 0])
    metrics.update(torch.full((2, 4, 4), 2), labels)  # every prediction wrong
    metrics.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    values = metrics.compute()
    assert values["miou"].item() == 0.0 and values["pixel_acc"].item() == 0.0
    kept = labels[labels != 255].numpy()
    assert values["pixels"].tolist() == np.bincount(kept, minlength=3).tolist() == [1, 2, 0]
    metrics.reset()
    metrics.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    assert not metrics.compute()["pixels"].any()  # what the segmenter stops on
