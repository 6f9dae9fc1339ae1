"""PredictionWriter (nat_lightning.callbacks.prediction_writer): one row per input, in input order,
undecodable images included with their error; CSV and JSON, atomic, mode 0644; a warning that
names the skipped files; and a real predict run over a folder of good and broken images."""

import csv
import io
import json
import math
import stat
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from nat_lightning.callbacks.prediction_writer import PredictionWriter, write_rows
from nat_lightning.callbacks.skipped_images import SkippedImagesReport
from nat_lightning.data import HFImageDataModule

BAD = "undecodable image"


def outputs() -> list[dict]:
    """Two predict_step outputs: ids a, b, c with b undecodable; then d, undecodable alone."""
    return [
        {
            "ids": ["a", "b", "c"],
            "errors": [None, BAD, None],
            "top_ids": torch.tensor([[2, 0], [1, 2]]),
            "top_labels": [["cat", "ant"], ["bee", "cat"]],
            "top_probs": torch.tensor([[0.75, 0.125], [0.5, 0.25]]),
        },
        {
            "ids": ["d"],
            "errors": [BAD],
            "top_ids": torch.zeros(0, 2, dtype=torch.long),
            "top_labels": [],
            "top_probs": torch.zeros(0, 2),
        },
    ]


def write(tmp_path, output: str, predictions: list[dict]):
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), world_size=1, global_rank=0)
    PredictionWriter(output).write_on_epoch_end(trainer, None, predictions, None)
    return tmp_path / output


def test_csv_has_one_row_per_input_with_an_error_column(tmp_path):
    with pytest.warns(
        UserWarning, match=r"2 of 4 input image\(s\) could not be decoded .*\['b', 'd'\]"
    ):
        path = write(tmp_path, "out/predictions.csv", outputs())
    assert list(csv.reader(path.read_text().splitlines())) == [
        ["id", "label_1", "label_2", "prob_1", "prob_2", "error"],
        ["a", "cat", "ant", "0.75", "0.125", ""],
        ["b", "", "", "", "", BAD],
        ["c", "bee", "cat", "0.5", "0.25", ""],
        ["d", "", "", "", "", BAD],
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]  # no temporary left


def test_json_rows_carry_class_ids_and_null_errors(tmp_path):
    with pytest.warns(UserWarning, match="could not be decoded"):
        path = write(tmp_path, "predictions.json", outputs())
    rows = json.loads(path.read_text())
    assert rows[0] == {
        "id": "a",
        "labels": ["cat", "ant"],
        "probs": [0.75, 0.125],
        "class_ids": [2, 0],
        "error": None,
    }
    assert rows[1] == {"id": "b", "labels": [], "probs": [], "class_ids": [], "error": BAD}
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"] and rows[3]["error"] == BAD
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_outputs_without_errors_and_the_warning_limit(tmp_path, recwarn):
    clean = {key: value for key, value in outputs()[0].items() if key != "errors"}
    clean["ids"] = ["a", "c"]  # no "errors": every id was decoded
    path = write(tmp_path, "clean.csv", [clean])
    assert [row[0] for row in csv.reader(path.read_text().splitlines())] == ["id", "a", "c"]
    assert not recwarn.list
    many = {**outputs()[1], "ids": [f"f{i}.png" for i in range(12)], "errors": [BAD] * 12}
    with pytest.warns(UserWarning, match=r"12 of 12 .*'f9.png'\] and 2 more"):
        write(tmp_path, "many.csv", [many])


def test_a_mismatched_output_is_an_error(tmp_path):
    wrong = {**outputs()[0], "errors": [None, None, None]}  # 3 predicted ids, 2 top-k rows
    with pytest.raises(ValueError, match=r"3 ids, 3 errors and 2 top-k rows; expected"):
        write(tmp_path, "x.csv", [wrong])


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("old")
    with pytest.raises(KeyError):
        write_rows(path, [{"id": "a"}])  # no labels: fails while writing
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]


class ColourProbe(L.LightningModule):
    """Classes red, green, blue; logits are 10 x the mean channel values (0..1)."""

    def __init__(self):
        super().__init__()
        self.names = ["red", "green", "blue"]

    def predict_step(self, batch, batch_idx):  # the NatClassifier contract
        probs = (10 * batch["pixel_values"].mean(dim=(2, 3))).softmax(-1)
        top_probs, top_ids = probs.topk(2, dim=-1)
        return {
            "ids": batch["ids"],
            "errors": [None if ok else BAD for ok in batch["decoded"]],
            "top_ids": top_ids,
            "top_labels": [[self.names[i] for i in row] for row in top_ids.tolist()],
            "top_probs": top_probs,
        }


def png(colour) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(tmp_path, files: dict[str, bytes], max_skipped_fraction: float):
    for name, data in files.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    labelled = Dataset.from_dict(
        {"image": [{"bytes": png((0, 0, 0)), "path": None}], "label": [0]},
        features=Features({"image": Image(), "label": ClassLabel(names=["x"])}),
    )  # the data module's dataset: unused when predicting on paths
    data = HFImageDataModule(
        labelled,
        predict_paths=str(tmp_path / "in"),
        image_size=8,
        crop_pct=1.0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        batch_size=2,
        num_workers=0,
        max_skipped_fraction=max_skipped_fraction,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[PredictionWriter("predictions.csv"), SkippedImagesReport()],
    )
    trainer.predict(ColourProbe(), datamodule=data, return_predictions=False)


def test_predicting_on_a_folder_of_good_and_broken_files(tmp_path):
    files = {
        "0.png": png((255, 0, 0)),
        "1.png": b"",
        "2.png": png((0, 0, 255)),
        "3.png": b"\x89PNG",
    }
    files["4.png"] = png((0, 255, 0))
    with pytest.warns(UserWarning, match=r"2 of 5 input image\(s\) could not be decoded"):
        predict(tmp_path, files, max_skipped_fraction=0.5)
    top, second = 1 / (1 + 2 * math.exp(-10)), math.exp(-10) / (1 + 2 * math.exp(-10))
    folder = tmp_path / "in"
    rows = list(csv.DictReader((tmp_path / "predictions.csv").read_text().splitlines()))
    assert [row["id"] for row in rows] == [str(folder / f"{i}.png") for i in range(5)]
    assert [row["error"] for row in rows] == ["", BAD, "", BAD, ""]
    assert [row["label_1"] for row in rows] == ["red", "", "blue", "", "green"]
    assert float(rows[0]["prob_1"]) == round(top, 6) and float(rows[0]["prob_2"]) == round(
        second, 6
    )
    assert rows[1]["prob_1"] == rows[1]["label_2"] == ""


def test_a_mostly_broken_folder_is_written_then_stops_the_run(tmp_path):
    files = {"0.png": png((255, 0, 0)), "1.png": b"", "2.png": b""}
    with pytest.raises(ValueError, match=r"2 of 3 images in predict .*1.png.*2.png"):
        predict(tmp_path, files, max_skipped_fraction=0.5)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").read_text().splitlines()))
    assert [row["error"] for row in rows] == ["", BAD, BAD]
