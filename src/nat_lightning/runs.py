"""Run folders: every CLI run writes into a fresh ``<default_root_dir>/version_N/``.

    runs/quickstart/version_0/checkpoints/{last.ckpt, epoch009-acc0.9870.ckpt, on_exception.ckpt}
    runs/quickstart/version_0/{metrics.csv, hparams.yaml, config.yaml}
    runs/quickstart/version_0/resumed_1/...   the logs of a resumed part (nothing is rewritten)

A run never writes into another run's folder; resuming is asked for with ``--ckpt_path last``,
which continues the newest run that has a checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

from .callbacks.checkpoints import LAST, ON_EXCEPTION

_VERSION = re.compile(r"^version_(\d+)$")


def runs_in(root: str | Path) -> list[Path]:
    """The run folders under ``root``, oldest (lowest number) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    return [p for _, p in sorted(found)]


def new_run(root: str | Path) -> Path:
    """Create and return the next ``version_N`` folder; safe against a concurrent run."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        existing = runs_in(root)
        number = int(_VERSION.match(existing[-1].name)[1]) + 1 if existing else 0
        folder = root / f"version_{number}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # another process took this number first
            continue


def next_resumed_logs(run: Path) -> Path:
    """``<run>/resumed_K``, the first K that does not exist: where a resumed part logs."""
    k = 1
    while (run / f"resumed_{k}").exists():
        k += 1
    return run / f"resumed_{k}"


def last_checkpoint(root: str | Path) -> tuple[Path, Path]:
    """(checkpoint, run folder) for ``--ckpt_path last``: the newer of ``last.ckpt`` and
    ``on_exception.ckpt`` in the newest run that has either."""
    for run in reversed(runs_in(root)):
        candidates = [run / "checkpoints" / name for name in (LAST, ON_EXCEPTION)]
        candidates = [c for c in candidates if c.is_file()]
        if candidates:
            return max(candidates, key=lambda c: c.stat().st_mtime_ns), run
    raise ValueError(
        f"ckpt_path='last': no run under default_root_dir={str(root)!r} has a "
        f"checkpoints/{LAST} or checkpoints/{ON_EXCEPTION} (runs: "
        f"{[p.name for p in runs_in(root)] or 'none'}); expected a finished or interrupted run "
        "there, or pass the checkpoint's path"
    )
