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
QUICK = [
    "--config",
    "configs/quickstart.yaml",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.max_epochs",
    "2",
]


def run_module(module: str, *args: str, timeout: float, env: dict | None = None) -> tuple[int, str]:
    """``python -m module *args`` in the repository, in a session of its own: its exit status and
    output. Past ``timeout`` seconds its whole process group (DDP ranks, data workers) is killed
    and the test fails."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {module} {args}:\n{out[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def offline_env(folder: Path) -> dict:
    """No Hub access; a datasets cache of the test's own; the repository importable."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_DATASETS_CACHE": str(folder / "hf_cache"),
        "PYTHONPATH": str(REPO),
    }


def cli(*args: str, timeout: float = 240, expect: int = 0) -> str:
    """Run the CLI; its output. Fails on another exit code or after ``timeout`` seconds."""
    returncode, out = run_module("nat_lightning", *args, timeout=timeout)
    assert returncode == expect, f"exit {returncode} (expected {expect}) for {args}:\n{out[-6000:]}"
    return out


def metrics(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def last_value(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key)][-1]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
