"""Evaluation, prediction and streaming with two real processes (DDP over gloo) through
``python -m nat_lightning``, each run under a hard timeout that kills every rank.

- ``validate`` and ``test`` on two processes give the metrics of one process, on splits whose
  sizes divide by neither the world size nor the batch size (ranks run different batch counts).
- ``predict`` on two processes writes one file with every input once, in input order.
- A streaming fit on uneven parquet shards trains on every example once per epoch, across ranks
  and DataLoader workers, and validates on every validation example once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from tests.data.conftest import colour_of, id_of, png
from tests.runner import QUICK, cli, metrics

from nat_lightning.data import DIGITS_PARQUET

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
ONE = ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
DDP_TIMEOUT = 360  # s; two ranks on a busy 2-core machine, still a hard limit against a hang
# digits rows of each split: 99 and 71 are odd, and with batches of 7 rank 0 runs one batch
# more than rank 1 (50 = 7 * 7 + 1 rows against 49; 36 = 7 * 5 + 1 against 35)
SPLITS = {"train": range(1000), "validation": range(1000, 1099), "test": range(1100, 1171)}
EVAL = ["--data.batch_size", "7"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A quickstart checkpoint: 2 short epochs, so accuracies are far from 0 and 1."""
    root = tmp_path_factory.mktemp("fit")
    cli("fit", *QUICK, "--trainer.default_root_dir", str(root))
    return root / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A parquet folder of digits with train, validation and test splits (SPLITS)."""
    folder = tmp_path_factory.mktemp("digits")
    table = pq.read_table(DIGITS_PARQUET)  # its schema carries the Image and ClassLabel features
    for split, rows in SPLITS.items():
        pq.write_table(table.slice(rows.start, len(rows)), folder / f"{split}.parquet")
    return folder


def evaluation(run: Path, stage: str) -> dict[str, float]:
    """The stage's epoch metrics of a run folder's metrics.csv: acc1, acc5, loss, acc_class/*."""
    (row,) = [r for r in metrics(run) if r.get(f"{stage}/acc1")]
    return {k.split("/", 1)[1]: float(v) for k, v in row.items() if k.startswith(stage) and v}


def class_counts(folder: Path, split: str) -> dict[str, int]:
    labels = pq.read_table(folder / f"{split}.parquet", columns=["label"])["label"].to_pylist()
    return {str(c): labels.count(c) for c in sorted(set(labels))}


STAGES = {  # the command, its split, what selects it and the prefix of its metrics
    "validate": ("validation", [], "val"),
    "test": ("test", ["--data.test_split", "test"], "test"),
}


@pytest.fixture(scope="module", params=sorted(STAGES))
def evaluated(request, checkpoint, digits, tmp_path_factory) -> tuple[str, dict, dict]:
    """(split, metrics of one process, metrics of two) of one evaluation command."""
    stage = request.param
    split, select, prefix = STAGES[stage]
    runs = {}
    for name, devices in (("one", ONE), ("two", DDP)):
        root = tmp_path_factory.mktemp(f"{stage}-{name}")
        args = ["--ckpt_path", str(checkpoint), "--data.dataset", str(digits), *select, *EVAL]
        cli(stage, *args, *devices, "--trainer.default_root_dir", str(root), timeout=DDP_TIMEOUT)
        runs[name] = evaluation(root / "version_0", prefix)
    return split, runs["one"], runs["two"]


@pytest.mark.slow
def test_two_processes_evaluate_like_one(evaluated, digits):
    """Was: Lightning's DistributedSampler read the split's first row twice (on both ranks) to
    give them equal shares, so the two-process metrics counted it twice."""
    split, one, two = evaluated
    counts = class_counts(digits, split)
    accuracies = sorted(["acc1", "acc5", *(f"acc_class/{c}" for c in counts)])
    assert sorted(set(one) - {"loss"}) == sorted(set(two) - {"loss"}) == accuracies
    for name in accuracies:
        assert two[name] == pytest.approx(one[name], rel=1e-6, abs=1e-9), name
    # independent of the runs compared: the split's own class counts. Counts of correct
    # predictions are whole numbers, and the per-class ones add up to the top-1 one
    n = sum(counts.values())
    assert n == len(SPLITS[split]) and n % 2 == 1
    for run in (one, two):
        correct = {c: run[f"acc_class/{c}"] * counts[c] for c in counts}
        assert all(abs(k - round(k)) < 1e-4 for k in correct.values()), correct
        assert run["acc1"] * n == pytest.approx(sum(correct.values()), abs=1e-4)
        assert 0.05 < run["acc1"] < 0.95  # a model that tells some digits apart, not all


@pytest.mark.slow
def test_two_processes_give_the_loss_of_one(evaluated):
    """Was: the loss was logged with sync_dist=True (mean): Lightning averaged the ranks' integer
    example counts in place (gloo), truncating an odd total (99 / 2 to 49), so the two-process
    loss was the sum over 99 examples divided by 98. Now a MeanMetric weighted by labelled rows."""
    _, one, two = evaluated
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def predictions(run: Path) -> list[dict]:
    assert sorted(p.name for p in run.glob("predictions*")) == ["predictions.csv"]
    return list(csv.DictReader((run / "predictions.csv").open()))


@pytest.mark.slow
def test_two_processes_predict_every_input_once_in_order_into_one_file(checkpoint, tmp_path):
    """Was: each rank wrote its own predictions.rank<r>.csv."""
    folder = tmp_path / "images"
    folder.mkdir()
    images = pq.read_table(DIGITS_PARQUET, columns=["image"])["image"].to_pylist()[:7]
    files = [folder / f"{i}.png" for i in range(7)]
    for i, path in enumerate(files):  # 3.png does not decode
        path.write_bytes(b"\x89PNG broken" if i == 3 else images[i]["bytes"])
    runs = {}
    for name, devices in (("one", ONE), ("two", DDP)):
        args = ["--ckpt_path", str(checkpoint), "--data.predict_paths", str(folder)]
        root = ["--trainer.default_root_dir", str(tmp_path / name)]
        cli("predict", *args, "--data.batch_size", "2", *devices, *root, timeout=DDP_TIMEOUT)
        runs[name] = predictions(tmp_path / name / "version_0")
    one, two = runs["one"], runs["two"]
    assert [row["id"] for row in two] == [str(path) for path in files]  # each once, in order
    assert [row["error"] for row in two] == [
        "" if i != 3 else "undecodable image" for i in range(7)
    ]
    assert [row["label_1"] for row in two] == [row["label_1"] for row in one]
    for a, b in zip(one, two):
        assert float(b["prob_1"] or 0) == pytest.approx(float(a["prob_1"] or 0), abs=1e-5)


class RecordIds(L.Callback):
    """Writes ``seen-rank<r>-epoch<e>.json`` into the run folder at each training epoch's end:
    the (colour id, label) of every labelled example the rank trained and validated on, and its
    number of training batches. Colour ids are read from the pixels (tests.data.conftest), which
    needs mean 0 and std 1; padding rows (label -100) are left out."""

    def __init__(self):
        self.seen = self._empty()

    @staticmethod
    def _empty() -> dict:
        return {"train": [], "val": [], "train_batches": 0}

    @staticmethod
    def _examples(batch) -> list[list[int]]:
        pairs = zip(batch["pixel_values"], batch["labels"].tolist())
        return [[id_of(pixels), label] for pixels, label in pairs if label >= 0]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen["train"] += self._examples(batch)
        self.seen["train_batches"] += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.seen["val"] += self._examples(batch)

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation
        name = f"seen-rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        (Path(trainer.default_root_dir) / name).write_text(json.dumps(self.seen))
        self.seen = self._empty()


TRAIN_SHARDS = (range(11), range(11, 28), range(28, 51))  # 11, 17 and 23 rows
VALIDATION = range(100, 113)


def coloured_parquet(path: Path, ids: range) -> None:
    """Example i: a solid colour_of(i) PNG, label i % 4 of the classes a..d."""
    features = Features({"image": Image(), "label": ClassLabel(names=list("abcd"))})
    rows = {
        "image": [{"bytes": png(colour_of(i)), "path": None} for i in ids],
        "label": [i % 4 for i in ids],
    }
    Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.mark.slow
def test_a_two_process_streaming_fit_on_uneven_shards_sees_each_example_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k, ids in enumerate(TRAIN_SHARDS):
        coloured_parquet(data / f"train-{k:05d}-of-00003.parquet", ids)
    coloured_parquet(data / "validation-00000-of-00001.parquet", VALIDATION)
    # mean 0, std 1: the pixels are the colours RecordIds reads the ids from
    plain = ["--data.mean", "[0, 0, 0]", "--data.std", "[1, 1, 1]"]
    stream = ["--data.dataset", str(data), "--data.streaming", "true", "--data.batch_size", "4"]
    workers = ["--data.num_workers", "2", "--trainer.callbacks+=tests.test_ddp_eval.RecordIds"]
    fit = ["--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "runs")]
    args = ["--config", "configs/quickstart.yaml", *stream, *plain, *workers, *fit, *DDP]
    cli("fit", *args, timeout=DDP_TIMEOUT)
    run = tmp_path / "runs" / "version_0"
    train = sorted([i, i % 4] for ids in TRAIN_SHARDS for i in ids)
    val = sorted([i, i % 4] for i in VALIDATION)
    for epoch in (0, 1):
        ranks = [json.loads((run / f"seen-rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert sorted(ranks[0]["train"] + ranks[1]["train"]) == train, f"epoch {epoch}"
        assert sorted(ranks[0]["val"] + ranks[1]["val"]) == val, f"epoch {epoch}"
        assert ranks[0]["train_batches"] == ranks[1]["train_batches"]  # in step: no hang
        assert ranks[0]["train"] and ranks[1]["train"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
