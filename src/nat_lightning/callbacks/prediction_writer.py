"""Write ``predict`` results to CSV or JSON through Lightning's BasePredictionWriter.

Under several processes each rank predicts its share of the inputs (HFImageDataModule divides
them without repeating one). The rows meet in one file: every rank hands its rows, each with its
input position, to every other in one ``all_gather_object``, and rank 0 writes them sorted by
position. That is the only collective here; every rank calls it once per predict epoch, from
``on_predict_epoch_end``, which Lightning runs on every rank in the same callback order. Rows are
gathered to every rank, not only to rank 0, so that a rank whose output is malformed makes every
rank raise the same error instead of leaving the others waiting at the next collective.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..files import write_atomically
from ..runs import shown

MAX_NAMED = 10  # undecodable inputs the end-of-run warning names


class PredictionWriter(BasePredictionWriter):
    """One row per input image, in input order: its id (file path or dataset index), top-k labels
    and probabilities (for a multi-label classifier: the predicted label set and every class's
    probability), and an ``error``: empty for a predicted image, the reason for one that
    could not be decoded (whose labels and probabilities stay empty). A warning names the first
    MAX_NAMED of those.

    Each ``predict_step`` output holds ``ids`` (every input of the batch, in order), ``errors``
    (None or a string per id; absent: no errors) and, for the ids whose error is None and in
    their order, ``top_ids`` (n, k), ``top_labels`` (n lists of k) and ``top_probs`` (n, k).

    The rows follow the input order: each row's position is its index in the predict dataset
    (Lightning records the indices of every batch of a map-style loader), else its id when that
    is an integer row index (a streamed split); rows without either keep the order they came in,
    rank after rank. Under several processes every input is written once, by rank 0, into one
    file. The format follows the suffix of ``output`` (``.csv`` or ``.json``). Files are written
    atomically, mode 0644.
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
        if trainer.world_size == 1:
            rows = merged([positioned_rows(predictions, batch_indices)])
        else:
            rows = gathered_rows(trainer, predictions, batch_indices)
            if trainer.global_rank != 0:
                return
        path = Path(trainer.default_root_dir) / self.output
        write_rows(path, rows)
        failed = [row["id"] for row in rows if row["error"] is not None]
        rank_zero_info(f"predict: wrote {len(rows)} row(s) to {shown(path)[0]}{_failed(failed)}")
        if failed:
            more = f" and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
            warnings.warn(
                f"{len(failed)} of {len(rows)} input image(s) could not be decoded and have no "
                f"prediction (see the error column of {path}): {failed[:MAX_NAMED]}{more}",
                stacklevel=1,
            )


def _failed(ids: list) -> str:
    return f" ({len(ids)} undecodable: no prediction, see the error column)" if ids else ""


def gathered_rows(trainer, predictions: list, batch_indices: list | None) -> list[dict]:
    """Every rank's rows in input order, on every rank; a ValueError on every rank when the
    outputs of any rank cannot be read."""
    try:
        local, error = positioned_rows(predictions, batch_indices), None
    except Exception as err:  # noqa: BLE001 - raised below, on every rank alike
        local, error = [], f"{type(err).__name__}: {err}"
    # the collective: every rank, once per predict epoch (see the module docstring)
    parts: list = [None] * trainer.world_size
    dist.all_gather_object(parts, (local, error))
    failed = [(rank, message) for rank, (_, message) in enumerate(parts) if message is not None]
    if failed:
        rank, message = failed[0]
        raise ValueError(f"the predict_step outputs of rank {rank} cannot be written: {message}")
    return merged([part for part, _ in parts])


def positioned_rows(predictions: list, batch_indices: list | None) -> list[tuple[int | None, dict]]:
    """(input position, row) for every row of one process's predict_step outputs.

    ``batch_indices`` is Lightning's: per dataloader, per batch, the dataset indices of its rows
    (empty where it cannot know them, e.g. for an iterable dataset)."""
    indices = batch_indices[0] if batch_indices else []
    rows = []
    for b, batch in enumerate(predictions):
        if batch is None:
            continue
        known = indices[b] if b < len(indices) and len(indices[b]) == len(batch["ids"]) else None
        for j, row in enumerate(batch_rows(batch)):
            position = known[j] if known is not None else batch["ids"][j]
            rows.append((position if isinstance(position, int) else None, row))
    return rows


def merged(parts: list[list[tuple[int | None, dict]]]) -> list[dict]:
    """The rows of every rank's part, sorted by input position when every row has one (an input
    that several ranks predicted is written once); otherwise in the order given, with a warning
    when there are several parts."""
    rows = [item for part in parts for item in part]
    if any(position is None for position, _ in rows):
        if len(parts) > 1:
            rank_zero_warn(
                "some predictions have no input position (neither a dataset index nor an "
                "integer id): the rows are written rank after rank, not in input order"
            )
        return [row for _, row in rows]
    unique = {}
    for position, row in rows:
        unique.setdefault(position, row)
    return [unique[position] for position in sorted(unique)]


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
    names = batch.get("class_names")
    for k, i in enumerate(predicted):
        rows[i].update(
            labels=list(batch["top_labels"][k]),
            probs=[round(float(p), 6) for p in _as_list(batch["top_probs"][k])],
            class_ids=[int(c) for c in _as_list(batch["top_ids"][k])],
        )
        if names is not None:  # multi-label: every class's probability
            scores = _as_list(batch["scores"][k])
            rows[i]["scores"] = {n: round(float(p), 6) for n, p in zip(names, scores)}
    return rows


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def write_rows(path: Path, rows: list[dict]) -> None:
    """The rows as JSON, or as CSV (id, label_1..k, prob_1..k, error; for multi-label id,
    labels, one score column per class, error), written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            if path.suffix == ".json":
                json.dump(rows, f, indent=1)
                return
            writer = csv.writer(f)
            names = next((list(r["scores"]) for r in rows if "scores" in r), None)
            if names is not None:
                write_label_sets(writer, rows, names)
                return
            k = max((len(r["labels"]) for r in rows), default=0)
            labels = [f"label_{i + 1}" for i in range(k)]
            writer.writerow(["id", *labels, *[f"prob_{i + 1}" for i in range(k)], "error"])
            for r in rows:
                blank = [""] * (k - len(r["labels"]))
                writer.writerow([r["id"], *r["labels"], *blank, *r["probs"], *blank, r["error"]])

    write_atomically(path, write)


def write_label_sets(writer, rows: list[dict], names: list[str]) -> None:
    """Multi-label CSV rows: id, the predicted classes joined by ``;`` (most probable first), each
    class's probability (``score_<name>``), error."""
    writer.writerow(["id", "labels", *[f"score_{n}" for n in names], "error"])
    for r in rows:
        scores = r.get("scores") or {}
        values = [scores.get(n, "") for n in names]
        writer.writerow([r["id"], ";".join(r["labels"]), *values, r["error"]])
