"""Run ``python -m nat_lightning`` the way a user does: a subprocess, default callbacks and the
progress bar on, under a hard timeout that kills its whole process group (DDP ranks included)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--config", "configs/quickstart.yaml", "--trainer.limit_train_batches", "3",
         "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "2"]


def cli(*args: str, timeout: float = 240, expect: int = 0, signal_after: float | None = None) -> str:
    """Run the CLI; its output. Fails on another exit code or after ``timeout`` seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "nat_lightning", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if signal_after is not None:  # e.g. SIGTERM a running fit, as a cluster's scheduler does
            try:
                out, _ = proc.communicate(timeout=signal_after)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = ""
        pytest.fail(f"timed out after {timeout} s: {args}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) for {args}:\n{out[-6000:]}"
    return out


def metrics(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def last_value(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key)][-1]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


