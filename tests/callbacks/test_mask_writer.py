import csv
import types

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from nat_lightning import NatConfig
from nat_lightning.callbacks.mask_writer import MaskWriter, palette
from nat_lightning.data import shapes_datamodule
from nat_lightning.tasks import NatSegmenter

VOC_FIRST = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]  # PASCAL VOC's


def fake_trainer(tmp_path, mean=(0.5,) * 3, std=(0.5,) * 3):
    data = types.SimpleNamespace(preprocessing={"mean": mean, "std": std})
    return types.SimpleNamespace(
        default_root_dir=str(tmp_path), world_size=1, global_rank=0, datamodule=data
    )


def read_index(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_palette_pngs_read_back_as_class_ids_and_the_index_follows_input_order(tmp_path):
    writer, trainer = MaskWriter(), fake_trainer(tmp_path)
    masks = [torch.randint(0, 5, (6, 9), dtype=torch.uint8) for _ in range(3)]
    later = {
        "ids": ["/in/c.jpg", "/in/d.jpg"],
        "errors": [None, "undecodable image"],
        "masks": [masks[2]],
    }
    first = {"ids": ["/in/a.jpg", "/in/b.jpg"], "errors": None, "masks": masks[:2]}
    writer.on_predict_epoch_start(trainer, None)
    writer.write_on_batch_end(trainer, None, later, [2, 3], {}, 0, 0)  # batches out of order
    writer.write_on_batch_end(trainer, None, first, [0, 1], {}, 1, 0)
    with pytest.warns(UserWarning, match="1 of 4 input image.*could not be decoded.*d.jpg"):
        writer.on_predict_epoch_end(trainer, None)
    rows = read_index(tmp_path / "masks" / "index.csv")
    assert [r["id"] for r in rows] == ["/in/a.jpg", "/in/b.jpg", "/in/c.jpg", "/in/d.jpg"]
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.png", ""]
    assert [r["error"] for r in rows] == ["", "", "", "undecodable image"]
    for name, mask in zip("abc", masks):
        image = Image.open(tmp_path / "masks" / f"{name}.png")
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), mask.numpy())
        rgb = np.array(image.convert("RGB"))
        assert all(tuple(rgb[y, x]) == VOC_FIRST[mask[y, x]] for y in range(6) for x in range(9))
    assert palette()[:15] == [c for colour in VOC_FIRST for c in colour]


def test_overlays_blend_the_image_at_its_original_size(tmp_path):
    writer, trainer = MaskWriter(overlay=True, alpha=0.25), fake_trainer(tmp_path)
    image = torch.rand(3, 4, 4)
    pixel_values = torch.zeros(1, 3, 4, 6)  # padded on the right
    pixel_values[0, :, :, :4] = (image - 0.5) / 0.5
    mask = torch.ones(4, 4, dtype=torch.uint8)  # class 1: (128, 0, 0)
    batch = {
        "pixel_values": pixel_values,
        "content": torch.tensor([[4, 4]]),
        "sizes": torch.tensor([[4, 4]]),
    }
    writer.write_on_batch_end(
        trainer, None, {"ids": [7], "errors": [None], "masks": [mask]}, [0], batch, 0, 0
    )
    writer.on_predict_epoch_end(trainer, None)
    blend = np.array(Image.open(tmp_path / "masks" / "7_overlay.png")).astype(float)
    expected = 0.75 * np.round(image.permute(1, 2, 0).numpy() * 255) + 0.25 * np.array([128, 0, 0])
    np.testing.assert_allclose(blend, expected, atol=1.0)
    assert read_index(tmp_path / "masks" / "index.csv")[0] == {
        "id": "7",
        "file": "7.png",
        "overlay": "7_overlay.png",
        "error": "",
    }


def test_malformed_outputs_and_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="alpha must be in"):
        MaskWriter(alpha=2.0)
    with pytest.raises(ValueError, match="2 ids, 2 errors and 0 masks"):
        MaskWriter().write_on_batch_end(
            fake_trainer(tmp_path),
            None,
            {"ids": [0, 1], "errors": None, "masks": []},
            [0, 1],
            {},
            0,
            0,
        )


def test_predict_writes_a_mask_per_input_through_the_trainer(tmp_path):
    config = NatConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], kernel_size=3, mlp_ratio=1.0
    )
    model = NatSegmenter(model=config, hidden_size=16, auxiliary_channels=8)
    data = shapes_datamodule(predict_split="validation", batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_predict_batches=2,
        default_root_dir=str(tmp_path),
        callbacks=[MaskWriter(overlay=True)],
    )
    trainer.predict(model, datamodule=data, return_predictions=False)
    rows = read_index(tmp_path / "masks" / "index.csv")
    assert [r["id"] for r in rows] == [str(i) for i in range(8)]
    for row in rows:
        mask = np.array(Image.open(tmp_path / "masks" / row["file"]))
        assert mask.shape == (64, 64) and mask.max() < 5
        assert Image.open(tmp_path / "masks" / row["overlay"]).size == (64, 64)


@pytest.mark.slow
def test_two_processes_write_one_index_in_input_order(tmp_path):
    import signal

    config = NatConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], kernel_size=3, mlp_ratio=1.0
    )
    model = NatSegmenter(model=config, hidden_size=16, auxiliary_channels=8)
    data = shapes_datamodule(predict_split="validation", batch_size=3)  # 80 inputs: 40 a rank
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[MaskWriter()],
    )
    signal.alarm(240)
    try:
        trainer.predict(model, datamodule=data, return_predictions=False)
    finally:
        signal.alarm(0)
    rows = read_index(tmp_path / "masks" / "index.csv")
    assert [r["id"] for r in rows] == [str(i) for i in range(80)]
    assert all((tmp_path / "masks" / r["file"]).is_file() and r["error"] == "" for r in rows)
