"""``nat-lightning cross_validate --folds K <fit arguments>``: K-fold cross-validation as K fits.

    nat-lightning cross_validate --folds 5 --config configs/quickstart.yaml --data.dataset my_images/

Each fold is an ordinary ``fit`` in a process of its own (so DDP and every fit option work as
they do alone) with ``--data.folds K --data.fold i``: the data module deals the training split
into K seeded, stratified parts and validates on part i (data/sources.py ``carve_fold``). The
folds live in a fresh run folder of the root, ``<default_root_dir>/version_N/fold_i/version_0``,
and beside them ``cv_summary.json`` and ``cv_summary.csv`` hold each fold's best value of the
task's monitored metric (``val/acc1``, ``val/miou``; ``val/map`` for multi-label data, as each
fold's checkpoint records it), their mean and standard deviation.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from . import runs, task_choice
from .files import read_lightning_checkpoint, write_atomically


def cross_validate(argv: list[str]) -> Path:
    """Run every fold of ``--folds K`` and write the summary; the run folder of the K folds."""
    folds, args = folds_argument(argv)
    task = task_choice.task_of(task_choice.chosen_classes(args)[0])
    if task is None:
        raise ValueError("cross_validate needs a NatTask model (its monitored metric ranks folds)")
    root = task_choice.chosen_value(args, "trainer.default_root_dir") or runs.DEFAULT_ROOT
    run = runs.new_run(root)
    rank_zero_info(
        f"cross_validate: {folds} folds in {runs.shown(run)[0]}, each ranked by the metric its "
        "best checkpoints are kept by"
    )
    best = []
    for fold in range(folds):
        fold_root = run / f"fold_{fold}"
        command = [
            sys.executable,
            "-m",
            "nat_lightning",
            "fit",
            *args,
            "--data.folds",
            str(folds),
            "--data.fold",
            str(fold),
            "--trainer.default_root_dir",
            str(fold_root),
        ]
        code = subprocess.call(command)
        if code != 0:
            raise SystemExit(
                f"cross_validate: fold {fold} of {folds} failed (exit {code}); its "
                f"output is above, its run in {runs.shown(fold_root)[0]}"
            )
        fold_run = fold_root / "version_0"
        monitor = fold_monitor(fold_run, task.monitor)
        best.append(best_value(fold_run / "metrics.csv", monitor, task.monitor_mode))
    summary = write_summary(run, monitor, best)
    rank_zero_info(
        f"cross_validate finished: {monitor} {summary['mean']:.4f} +- "
        f"{summary['std']:.4f} over {folds} folds; summary {runs.shown(run / 'cv_summary.json')[0]}"
    )
    return run


def folds_argument(argv: list[str]) -> tuple[int, list[str]]:
    """(K, the fit arguments) of ``--folds K`` among ``argv``; K >= 2."""
    args, folds = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--folds" or arg.startswith("--folds="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            folds = value
        else:
            args.append(arg)
    try:
        folds = int(folds)
    except (TypeError, ValueError):
        folds = None
    if folds is None or folds < 2:
        raise ValueError(
            f"cross_validate needs --folds K with K >= 2 (got {folds!r}); e.g. "
            "nat-lightning cross_validate --folds 5 --config configs/quickstart.yaml"
        )
    return folds, args


def fold_monitor(fold_run: Path, default: str) -> str:
    """The metric a fold's best checkpoints were kept by, as its last.ckpt recorded it (the data
    can decide it: ``val/map`` for a multi-label classifier); ``default`` without one."""
    path = fold_run / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return default
    states = read_lightning_checkpoint(path).get("callbacks") or {}
    monitors = [
        state.get("monitor")
        for name, state in states.items()
        if name.startswith("BestCheckpoint") and isinstance(state, dict)
    ]
    return next((m for m in monitors if m), default)


def best_value(metrics_csv: Path, monitor: str, mode: str) -> float:
    """The best logged value of ``monitor`` in a fit's metrics.csv (its highest for mode max)."""
    with metrics_csv.open() as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    if not values:
        raise ValueError(f"{metrics_csv} logged no {monitor}: did the fold validate?")
    return max(values) if mode == "max" else min(values)


def write_summary(run: Path, monitor: str, best: list[float]) -> dict:
    """cv_summary.json and cv_summary.csv beside the folds: each fold's best, mean and std."""
    summary = {
        "monitor": monitor,
        "folds": {f"fold_{i}": value for i, value in enumerate(best)},
        "mean": statistics.fmean(best),
        "std": statistics.stdev(best) if len(best) > 1 else 0.0,  # sample std (n - 1)
    }
    write_atomically(
        run / "cv_summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2))
    )

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["fold", monitor])
            writer.writerows([[f"fold_{i}", value] for i, value in enumerate(best)])
            writer.writerows([["mean", summary["mean"]], ["std", summary["std"]]])

    write_atomically(run / "cv_summary.csv", write_csv)
    return summary
