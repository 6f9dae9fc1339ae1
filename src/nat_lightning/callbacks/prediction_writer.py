"""Write ``predict`` results to CSV or JSON through Lightning's BasePredictionWriter."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """One row per image: its id (file name or dataset index), top-k labels and probabilities.

    The format follows the suffix of ``output`` (``.csv`` or ``.json``). Under several processes
    each rank writes ``<stem>.rank<r><suffix>``. Files are written atomically.
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
        rows = []
        for batch in predictions:
            for i, labels in enumerate(batch["top_labels"]):
                rows.append({
                    "id": str(batch["ids"][i]),
                    "labels": labels,
                    "probs": [round(p, 6) for p in batch["top_probs"][i].tolist()],
                    "class_ids": batch["top_ids"][i].tolist(),
                })
        path = Path(trainer.default_root_dir) / self.output
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        write_rows(path, rows)


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if path.suffix == ".json":
                json.dump(rows, f, indent=1)
            else:
                writer = csv.writer(f)
                k = max((len(r["labels"]) for r in rows), default=0)
                writer.writerow(["id"] + [f"label_{i + 1}" for i in range(k)] + [f"prob_{i + 1}" for i in range(k)])
                for r in rows:
                    writer.writerow([r["id"], *r["labels"], *r["probs"]])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
