"""Segmentation the way the README tells a user to run it: ``python -m nat_lightning`` with
configs/seg_quickstart.yaml in a subprocess (default callbacks, progress bar on), then the
checkpoint alone for validate, predict and export, and a 2-process DDP fit; each under a hard
timeout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.runner import cli, last_value, load, metrics, offline_env, run_module

from nat_lightning import NatForSemanticSegmentation, NatSegmenter
from nat_lightning.data import SHAPES_CLASSES

SEG = [
    "--config",
    "configs/seg_quickstart.yaml",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.max_epochs",
    "2",
]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("seg")
    out = cli("fit", *SEG, "--trainer.default_root_dir", str(root))
    return root / "version_0", out


def test_the_quickstart_fits_a_segmenter_and_keeps_the_best_miou(run):
    folder, out = run
    assert "fit finished: run folder" in out and "Error" not in out
    rows = metrics(folder)
    miou = last_value(rows, "val/miou")
    assert 0.0 <= miou <= 1.0
    assert last_value(rows, "val/pixel_acc") >= miou  # (a stricter measure never exceeds it)
    assert all(any(r.get(f"val/iou/{name}") for r in rows) for name in SHAPES_CLASSES)
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(
        n.startswith("epoch") and "-miou" in n for n in checkpoints
    )
    last = load(folder / "checkpoints" / "last.ckpt")
    assert last["hyper_parameters"]["_class_path"] == "nat_lightning.NatSegmenter"
    assert last["epoch"] == 1 and last["global_step"] == 6


def test_validate_from_the_checkpoint_alone_gives_the_runs_miou(run, tmp_path):
    """No --config: the checkpoint says NatSegmenter, its shapes data, 64 px and mean/std 0.5."""
    folder, _ = run
    cli(
        "validate",
        "--ckpt_path",
        str(folder / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.limit_val_batches",
        "2",
    )
    expected = last_value(metrics(folder), "val/miou")
    assert last_value(metrics(tmp_path / "version_0"), "val/miou") == pytest.approx(
        expected, abs=1e-6
    )


def test_predict_writes_a_palette_mask_per_image_at_its_size_and_an_index(run, tmp_path):
    folder, _ = run
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a_wide.png": (40, 90), "b_square.jpg": (64, 64), "c_tall.png": (100, 52)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(images / name)
    (images / "d_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    printed = cli(
        "predict",
        "--ckpt_path",
        str(folder / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir",
        str(tmp_path / "pred"),
        "--data.predict_paths",
        str(images),
        "--prediction.overlay",
        "true",
    )
    out = tmp_path / "pred" / "version_0" / "masks"
    assert (
        f"predict: wrote 3 mask and overlay PNGs to {out} and their index to {out / 'index.csv'} "
        "(1 undecodable: no mask)"
    ) in printed
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert [Path(r["id"]).name for r in rows] == [*sizes, "d_bad.png"]
    assert rows[-1]["error"] and not rows[-1]["file"]
    for row, (h, w) in zip(rows, sizes.values()):
        mask = Image.open(out / row["file"])
        assert mask.mode == "P" and mask.size == (w, h) and not row["error"]
        assert set(np.unique(np.asarray(mask))) <= set(range(len(SHAPES_CLASSES)))
        assert Image.open(out / row["overlay"]).size == (w, h)


def test_export_writes_an_upernet_folder_and_onnx_that_compute_the_checkpoints_logits(
    run, tmp_path
):
    folder, _ = run
    ckpt = str(folder / "checkpoints" / "last.ckpt")
    printed = cli("export", "--ckpt_path", ckpt, "--output", str(tmp_path / "hf"))
    assert (
        f"export: wrote {tmp_path / 'hf'} (README.md, config.json, model.safetensors, "
        "preprocessor_config.json)"
    ) in printed
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["UperNetForSemanticSegmentation"]
    assert config["id2label"] == {str(i): n for i, n in enumerate(SHAPES_CLASSES)}
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 64} and processor["image_mean"] == [0.5] * 3
    assert "image-segmentation" in (tmp_path / "hf" / "README.md").read_text()

    task = NatSegmenter.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    exported = NatForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = task.network(x).logits
        torch.testing.assert_close(exported(x).logits, expected, rtol=0, atol=0)

    ort = pytest.importorskip("onnxruntime")
    printed = cli(
        "export", "--ckpt_path", ckpt, "--output", str(tmp_path / "seg.onnx"), "--format", "onnx"
    )
    assert f"export: wrote {tmp_path / 'seg.onnx'}\n" in printed
    session = ort.InferenceSession(str(tmp_path / "seg.onnx"))
    (logits,) = session.run(None, {"pixel_values": x.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_a_two_process_fit_validates_every_image_once(tmp_path):
    out = cli("fit", *SEG, *DDP, "--trainer.default_root_dir", str(tmp_path), timeout=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version_0"]  # both ranks, one run
    last = load(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 6  # 3 batches per rank and epoch
    assert "sync_dist" not in out
    assert any(k.startswith("network.") and "running_mean" in k for k in last["state_dict"])
    assert 0.0 <= last_value(metrics(tmp_path / "version_0"), "val/miou") <= 1.0


def test_the_hub_fine_tune_recipe_fails_clearly_offline(tmp_path):
    """Without network or cache: the error itself (not jsonargparse's wrapping) names the
    checkpoint, then, with no pretrained weights, the dataset."""
    args = [
        "fit",
        "--config",
        "configs/finetune_sidewalk.yaml",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    env = {**offline_env(tmp_path), "HF_HOME": str(tmp_path / "hf_home")}
    code, out = run_module("nat_lightning", *args, timeout=120, env=env)
    last = out.strip().splitlines()[-1]
    assert code == 1 and last.startswith("OSError: could not load 'shi-labs/nat-mini-in1k-224'"), (
        out[-2000:]
    )
    assert "HF_HUB_OFFLINE" in last and "Union subtypes" not in out
    code, out = run_module(
        "nat_lightning", *args, "--model.pretrained", "null", timeout=120, env=env
    )
    assert code == 1 and "segments/sidewalk-semantic" in out.strip().splitlines()[-1], out[-2000:]
