"""Write ``predict`` results to CSV or JSON through Lightning's BasePredictionWriter."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

MAX_NAMED = 10  # undecodable inputs the end-of-run warning names


class PredictionWriter(BasePredictionWriter):
    """One row per input image, in input order: its id (file path or dataset index), top-k labels
    and probabilities, and an ``error``: empty for a predicted image, the reason for one that
    could not be decoded (whose labels and probabilities stay empty). A warning names the first
    MAX_NAMED of those.

    Each ``predict_step`` output holds ``ids`` (every input of the batch, in order), ``errors``
    (None or a string per id; absent: no errors) and, for the ids whose error is None and in
    their order, ``top_ids`` (n, k), ``top_labels`` (n lists of k) and ``top_probs`` (n, k).

    The format follows the suffix of ``output`` (``.csv`` or ``.json``). Under several processes
    each rank writes ``<stem>.rank<r><suffix>``. Files are written atomically, mode 0644.
    """

    def __init__(self, output: str = "predictions.csv"):
        """Args:
        output: file to write, relative to the trainer's default_root_dir unless absolute.
        """
        super().__init__(write_interval="epoch")
        if Path(output).suffix not in (".csv", ".json"):
            raise ValueError(f"output must end in .csv or .json, got {output=}")
        self.output = output

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        rows = [row for batch in predictions if batch is not None for row in batch_rows(batch)]
        path = Path(trainer.default_root_dir) / self.output
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        write_rows(path, rows)
        failed = [row["id"] for row in rows if row["error"] is not None]
        if failed:
            more = f" and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
            warnings.warn(
                f"{len(failed)} of {len(rows)} input image(s) could not be decoded and have no "
                f"prediction (see the error column of {path}): {failed[:MAX_NAMED]}{more}",
                stacklevel=1,
            )


def batch_rows(batch: dict) -> list[dict]:
    """One predict_step output as rows, one per id; the top-k rows go to the ids without an
    error, in order."""
    ids = batch["ids"]
    errors = batch.get("errors") or [None] * len(ids)
    predicted = [i for i, error in enumerate(errors) if error is None]
    if len(errors) != len(ids) or len(predicted) != len(batch["top_labels"]):
        raise ValueError(
            f"a predict_step output has {len(ids)} ids, {len(errors)} errors and "
            f"{len(batch['top_labels'])} top-k rows; expected as many errors as ids and one "
            "top-k row per id whose error is None"
        )
    rows = [
        {"id": str(i), "labels": [], "probs": [], "class_ids": [], "error": error}
        for i, error in zip(ids, errors)
    ]
    for k, i in enumerate(predicted):
        rows[i].update(
            labels=list(batch["top_labels"][k]),
            probs=[round(p, 6) for p in batch["top_probs"][k].tolist()],
            class_ids=batch["top_ids"][k].tolist(),
        )
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """The rows as JSON, or as CSV (id, label_1..k, prob_1..k, error), written to a temporary
    file that then replaces ``path``: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        with os.fdopen(fd, "w", newline="") as f:
            if path.suffix == ".json":
                json.dump(rows, f, indent=1)
            else:
                writer = csv.writer(f)
                k = max((len(r["labels"]) for r in rows), default=0)
                labels = [f"label_{i + 1}" for i in range(k)]
                writer.writerow(["id", *labels, *[f"prob_{i + 1}" for i in range(k)], "error"])
                for r in rows:
                    blank = [""] * (k - len(r["labels"]))
                    writer.writerow(
                        [r["id"], *r["labels"], *blank, *r["probs"], *blank, r["error"]]
                    )
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
