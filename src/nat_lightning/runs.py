"""Run folders: every CLI run writes into a fresh ``<default_root_dir>/version_N/``.

    runs/quickstart/version_0/checkpoints/{last.ckpt, epoch009-acc0.9870.ckpt, on_exception.ckpt}
    runs/quickstart/version_0/{metrics.csv, hparams.yaml, config.yaml}
    runs/quickstart/version_0/resumed_1/...   the logs of a resumed part (nothing is rewritten)

A run never writes into another run's folder; resuming is asked for with ``--ckpt_path last``,
which continues the newest run that has a checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .files import read_lightning_checkpoint

DEFAULT_ROOT = "runs/nat"  # default_root_dir when neither a config nor the command line sets one
LAST = "last.ckpt"  # rewritten after every epoch (callbacks.checkpoints.LastCheckpoint)
ON_EXCEPTION = "on_exception.ckpt"  # written when a fit that has trained stops on an exception
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


def last_checkpoint(root: str | Path) -> tuple[Path, Path, str]:
    """(checkpoint, run folder, what was chosen and why) for ``--ckpt_path last``: the newer of
    ``last.ckpt`` and ``on_exception.ckpt`` in the newest run that has trained, i.e. whose
    checkpoint was written after at least one optimizer step. Newer runs without one (a failed
    start, an evaluation) are passed over, and the explanation names them."""
    passed = []
    for run in reversed(runs_in(root)):
        found = [run / "checkpoints" / name for name in (LAST, ON_EXCEPTION)]
        steps = {c: trained_steps(c) for c in found if c.is_file()}
        trained = [c for c, step in steps.items() if step]
        if trained:
            path = max(trained, key=lambda c: c.stat().st_mtime_ns)
            why = f"resuming {run} from {path} (step {steps[path]})"
            if passed:
                why += f"; passed over newer runs that had not trained: {', '.join(passed)}"
            return path, run, why
        seen = [f"{c.name} {'at step 0' if s == 0 else 'unreadable'}" for c, s in steps.items()]
        passed.append(f"{run.name} ({', '.join(seen) or 'no checkpoint'})")
    raise ValueError(
        f"ckpt_path='last': no run under default_root_dir={str(root)!r} has a "
        f"checkpoints/{LAST} or checkpoints/{ON_EXCEPTION} written after a training step (runs: "
        f"{', '.join(reversed(passed)) or 'none'}); expected a finished or interrupted run "
        "there, or pass the checkpoint's path"
    )


def trained_steps(path: Path) -> int | None:
    """The optimizer steps a checkpoint was written after; None if it cannot be read."""
    try:
        checkpoint = read_lightning_checkpoint(path)
    except (OSError, ValueError):  # an unreadable file is passed over
        return None
    return int(checkpoint.get("global_step", 0))


def shown(*paths: str | Path) -> list[str]:
    """Paths as the closing lines print them: all relative to the working directory when every
    one of them lies under it, else all absolute, never a mix."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    here = Path.cwd()
    if all(p.is_relative_to(here) for p in absolute):
        return [str(p.relative_to(here)) or "." for p in absolute]
    return [str(p) for p in absolute]
