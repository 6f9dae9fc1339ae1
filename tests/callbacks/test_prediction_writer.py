"""PredictionWriter (nat_lightning.callbacks.prediction_writer): one row per input, in input order,
undecodable images included with their error; CSV and JSON, atomic, mode 0644; a warning that
names the skipped files; the rows of several ranks merged into one file in input order (the
collective itself runs in tests/test_ddp_eval.py); and a real predict run over a folder of good
and broken images."""

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

from nat_lightning.callbacks import prediction_writer
from nat_lightning.callbacks.prediction_writer import PredictionWriter, merged, write_rows
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


def write(tmp_path, output: str, predictions: list[dict], batch_indices=None, rank=0, world=1):
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), world_size=world, global_rank=rank)
    PredictionWriter(output).write_on_epoch_end(trainer, None, predictions, batch_indices)
    return tmp_path / output


def ids_of(path) -> list[str]:
    return [row[0] for row in csv.reader(path.read_text().splitlines())][1:]


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


def test_rows_follow_the_dataset_indices_lightning_records(tmp_path):
    # a loader that read inputs 3, 0, 2 and then 1: written back in input order
    with pytest.warns(UserWarning, match="could not be decoded"):
        path = write(tmp_path, "p.csv", outputs(), batch_indices=[[[3, 0, 2], [1]]])
    assert ids_of(path) == ["b", "d", "c", "a"]


def test_integer_ids_order_the_rows_of_a_stream_without_indices(tmp_path):
    stream = [{**outputs()[0], "ids": [4, 0, 2]}, {**outputs()[1], "ids": [1]}]
    with pytest.warns(UserWarning, match="could not be decoded"):
        path = write(tmp_path, "p.csv", stream, batch_indices=[[]])  # Lightning's for a stream
    assert ids_of(path) == ["0", "1", "2", "4"]


def test_the_parts_of_several_ranks_merge_in_input_order_once_each():
    def part(positions):
        return [(p, {"id": f"x{p}"}) for p in positions]

    # rank r read inputs r, r + 2, ...; input 2 reached both ranks (e.g. a sampler that repeats)
    rows = merged([part([0, 2, 4, 6]), part([1, 3, 5, 2])])
    assert [row["id"] for row in rows] == [f"x{i}" for i in range(7)]
    unknown = [[(None, {"id": "a"})], [(None, {"id": "b"})]]
    with pytest.warns(UserWarning, match="rank after rank, not in input order"):
        assert [row["id"] for row in merged(unknown)] == ["a", "b"]


def fake_ranks(monkeypatch, others: list):
    """all_gather_object as if the other ranks had sent ``others`` (rank 0 is this process)."""

    def all_gather_object(parts, mine):
        parts[:] = [mine, *others]

    monkeypatch.setattr(prediction_writer.dist, "all_gather_object", all_gather_object)


def test_rank_zero_writes_every_ranks_rows_and_the_others_write_nothing(tmp_path, monkeypatch):
    rank1 = [(1, {"id": "one", "labels": ["x"], "probs": [1.0], "class_ids": [0], "error": None})]
    fake_ranks(monkeypatch, [(rank1, None)])
    with pytest.warns(UserWarning, match="2 of 5 input image"):
        path = write(tmp_path, "p.csv", outputs(), [[[0, 2, 4], [3]]], rank=0, world=2)
    assert ids_of(path) == ["a", "one", "b", "d", "c"]
    write(tmp_path / "rank1", "p.csv", outputs(), [[[0, 2, 4], [3]]], rank=1, world=2)
    assert not (tmp_path / "rank1").exists()


def test_a_malformed_output_on_one_rank_stops_every_rank(tmp_path, monkeypatch):
    fake_ranks(monkeypatch, [([], "ValueError: a predict_step output has 3 ids")])
    with pytest.raises(ValueError, match="outputs of rank 1 cannot be written: ValueError: a pre"):
        write(tmp_path, "p.csv", outputs(), [[[0, 1, 2], [3]]], rank=0, world=2)
    assert not (tmp_path / "p.csv").exists()


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
