"""Universal segmentation the way the README tells a user to run it: ``python -m nat_lightning``
with configs/universal_quickstart.yaml in a subprocess (default callbacks, progress bar on), then
the checkpoint alone for validate, predict and export; a 2-process fit whose metrics one process
reproduces on an uneven split; inconsistent annotations skipped and named. Each run is a
subprocess under a hard timeout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from tests.runner import cli, last_value, load, metrics

from nat_lightning import NatForUniversalSegmentation, NatUniversalSegmenter
from nat_lightning.data import PANOPTIC_SHAPES_CLASSES, PANOPTIC_SHAPES_DATASET

# three whole epochs: enough for masks and a mIoU well above chance (0.78 in the quickstart's
# third epoch), so that predict finds instances
QUICK = ["--config", "configs/universal_quickstart.yaml", "--trainer.limit_val_batches", "2",
         "--trainer.max_epochs", "3"]  # fmt: skip
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
EVALUATED = ("val/pq", "val/sq", "val/rq", "val/pq_things", "val/pq_stuff", "val/miou",
             "val/pixel_acc", "val/map", "val/map_50")  # fmt: skip
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("universal")
    out = cli("fit", *QUICK, "--trainer.default_root_dir", str(root), timeout=TIMEOUT_S)
    return root / "version_0", out


def test_the_quickstart_fits_mask2former_and_keeps_the_best_pq(run):
    folder, out = run
    assert "fit finished: run folder" in out and "Error" not in out
    rows = metrics(folder)
    for key in (*EVALUATED, "val/loss"):
        assert np.isfinite(last_value(rows, key)), key
    assert 0.0 <= last_value(rows, "val/pq") <= 1.0
    assert last_value(rows, "val/pixel_acc") >= last_value(rows, "val/miou")
    assert all(any(r.get(f"val/iou/{name}") for r in rows) for name in PANOPTIC_SHAPES_CLASSES)
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert "last.ckpt" in names and any(n.startswith("epoch") and "-pq" in n for n in names)
    last = load(folder / "checkpoints" / "last.ckpt")
    hp = last["hyper_parameters"]
    assert hp["_class_path"] == "nat_lightning.NatUniversalSegmenter"
    assert hp["architecture"] == "mask2former" and hp["heads"]["num_queries"] == 16
    assert hp["stuff_ids"] == [3, 4]  # the embedded data's, recorded for evaluation alone
    assert last["epoch"] == 2 and last["global_step"] == 60
    assert last_value(rows, "val/miou") > 0.5
    assert (folder / "pictures").is_dir() and any((folder / "pictures").glob("*.png"))


def test_validate_from_the_checkpoint_alone_gives_the_runs_metrics(run, tmp_path):
    """No --config: the checkpoint says NatUniversalSegmenter, its panoptic shapes, 64 px,
    mean/std 0.5 and which classes are stuff."""
    folder, _ = run
    cli("validate", "--ckpt_path", str(folder / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "2",
        timeout=TIMEOUT_S)  # fmt: skip
    expected, found = metrics(folder), metrics(tmp_path / "version_0")
    for key in EVALUATED:
        assert last_value(found, key) == pytest.approx(last_value(expected, key), abs=1e-6), key


def write_images(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir()
    sizes = {"a_wide.png": (40, 90), "b_square.jpg": (64, 64), "c_tall.png": (100, 52)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(folder / name)
    (folder / "d_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return sizes


def test_predict_writes_panoptic_pngs_and_coco_json_in_input_order(run, tmp_path):
    folder, _ = run
    sizes = write_images(tmp_path / "images")
    printed = cli("predict", "--ckpt_path", str(folder / "checkpoints" / "last.ckpt"),
                  "--trainer.default_root_dir", str(tmp_path / "pred"),
                  "--data.predict_paths", str(tmp_path / "images"),
                  "--prediction.overlay", "true", timeout=TIMEOUT_S)  # fmt: skip
    out = tmp_path / "pred" / "version_0" / "panoptic"
    assert "predict: wrote" in printed and str(out) in printed
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert [Path(r["id"]).name for r in rows] == [*sizes, "d_bad.png"]
    assert rows[-1]["error"] and not rows[-1]["file"]
    annotations = json.loads((out / "predictions.json").read_text())["annotations"]
    assert [Path(a["image_id"]).name for a in annotations] == list(sizes)
    for row, annotation, (h, w) in zip(rows, annotations, sizes.values()):
        rgb = np.asarray(Image.open(out / row["file"]).convert("RGB")).astype(np.int64)
        assert rgb.shape == (h, w, 3) and Image.open(out / row["overlay"]).size == (w, h)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        listed = {s["id"] for s in annotation["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} <= listed
        assert int(row["segments"]) == len(listed)
        for segment in annotation["segments_info"]:
            assert 0 <= segment["category_id"] < len(PANOPTIC_SHAPES_CLASSES)
            assert segment["isthing"] == (segment["category_id"] < 3)


def test_instance_predict_writes_coco_results_with_rle_masks(run, tmp_path):
    mask_utils = pytest.importorskip("pycocotools.mask")
    folder, _ = run
    sizes = write_images(tmp_path / "images")
    cli("predict", "--ckpt_path", str(folder / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir", str(tmp_path / "pred"),
        "--data.predict_paths", str(tmp_path / "images"), "--model.task_type", "instance",
        "--model.threshold", "0.0", timeout=TIMEOUT_S)  # fmt: skip
    out = tmp_path / "pred" / "version_0" / "panoptic"
    results = json.loads((out / "predictions.json").read_text())
    assert results, "threshold 0 keeps every (query, class) pair whose mask is not empty"
    order = [Path(r["image_id"]).name for r in results]
    assert order == sorted(order) and set(order) <= set(sizes)  # input order: a, b, c
    for result in results:
        h, w = sizes[Path(result["image_id"]).name]
        rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
        assert mask_utils.decode(rle).shape == (h, w) and mask_utils.decode(rle).any()
        assert 0 <= result["category_id"] < 5 and 0 <= result["score"] <= 1


def test_export_writes_a_mask2former_folder_that_computes_the_checkpoints_outputs(run, tmp_path):
    folder, _ = run
    ckpt = str(folder / "checkpoints" / "last.ckpt")
    printed = cli("export", "--ckpt_path", ckpt, "--output", str(tmp_path / "hf"))
    assert f"export: wrote {tmp_path / 'hf'}" in printed
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Mask2FormerForUniversalSegmentation"]
    assert config["backbone_config"]["model_type"] == "nat"
    assert config["id2label"] == {str(i): n for i, n in enumerate(PANOPTIC_SHAPES_CLASSES)}
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "Mask2FormerImageProcessor"
    assert processor["size"] == {"shortest_edge": 64} and processor["image_mean"] == [0.5] * 3
    assert "Mask2Former" in (tmp_path / "hf" / "README.md").read_text()

    task = NatUniversalSegmenter.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    exported = NatForUniversalSegmentation.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, found = task.eval().network(x), exported(x)
    torch.testing.assert_close(found.class_queries_logits, expected.class_queries_logits)
    torch.testing.assert_close(found.masks_queries_logits, expected.masks_queries_logits)

    printed = cli("export", "--ckpt_path", ckpt, "--output", str(tmp_path / "m.onnx"),
                  "--format", "onnx", expect=1)  # fmt: skip
    assert "format='onnx': transformers' multi-scale deformable attention" in printed
    assert not (tmp_path / "m.onnx").exists()


def subset(folder: Path, train: int, val: int, broken: tuple[int, ...] = ()) -> Path:
    """The first rows of the embedded panoptic shapes as a parquet folder named by split; the
    training rows ``broken`` list a segment their PNG does not hold."""
    folder.mkdir()
    source = Path(PANOPTIC_SHAPES_DATASET)
    for split, rows in (("train", train), ("validation", val)):
        data = Dataset.from_parquet(str(source / f"{split}.parquet")).select(range(rows))
        if split == "train" and broken:

            def add_missing(example, index):
                if index in broken:
                    extra = {"id": 999_999, "category_id": 0, "iscrowd": 0}
                    example["segments_info"] = [*example["segments_info"], extra]
                return example

            data = data.map(add_missing, with_indices=True)
        data.to_parquet(str(folder / f"{split}.parquet"))
    return folder


def test_a_two_process_fit_evaluates_an_uneven_split_as_one_process_does(tmp_path):
    """13 validation images: 7 and 6 per rank. The metrics the 2-process fit logs after its
    last epoch are those of one process validating its last checkpoint."""
    data = subset(tmp_path / "data", train=16, val=13)
    common = ["--config", "configs/universal_quickstart.yaml", "--data.dataset", str(data),
              "--data.batch_size", "4", "--data.thing_classes", "[circle,square,triangle]"]  # fmt: skip
    cli("fit", *common, *DDP, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.default_root_dir", str(tmp_path / "ddp"), timeout=TIMEOUT_S)  # fmt: skip
    run = tmp_path / "ddp" / "version_0"
    cli("validate", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir", str(tmp_path / "one"), timeout=TIMEOUT_S)  # fmt: skip
    two, one = metrics(run), metrics(tmp_path / "one" / "version_0")
    for key in (*EVALUATED, "val/loss"):
        assert last_value(two, key) == pytest.approx(last_value(one, key), abs=1e-5), key


def test_inconsistent_annotations_are_skipped_counted_and_named_in_a_fit(tmp_path):
    data = subset(tmp_path / "data", train=16, val=4, broken=(2, 5))
    out = cli("fit", "--config", "configs/universal_quickstart.yaml", "--data.dataset", str(data),
              "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
              timeout=TIMEOUT_S)  # fmt: skip
    assert "2 of 16 image(s) in train" in out and "were skipped" in out
    assert "segments_info ids [999999] missing from the PNG" in out
    assert metrics(tmp_path / "runs" / "version_0")  # the fit went on and logged
