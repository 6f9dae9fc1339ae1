"""Two real DDP processes on the CPU, streaming with two DataLoader workers each: every example is
trained on exactly once per epoch across ranks and workers, every rank runs the same number of
steps, and nothing hangs (a hang fails the test after a timeout)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .ddp_run import TRAIN, VAL

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


@pytest.mark.slow
def test_streaming_ddp_reads_each_example_once_per_epoch(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.data.ddp_run", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the ranks and their workers too
        output, _ = process.communicate()
        pytest.fail(f"DDP run hung for {TIMEOUT_S} s:\n{output.decode()[-3000:]}")
    assert process.returncode == 0, output.decode()[-3000:]

    orders = []
    for epoch in (0, 1):
        ranks = [json.loads((tmp_path / f"rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert sorted(ranks[0]["train"] + ranks[1]["train"]) == list(TRAIN), f"epoch {epoch}"
        assert sorted(ranks[0]["val"] + ranks[1]["val"]) == list(VAL), f"epoch {epoch}"
        assert ranks[0]["train_batches"] == ranks[1]["train_batches"]
        # 45 rows in 32 shards, 8 per worker: some worker has fewer rows than others, so padding ran
        assert ranks[0]["padding_batches"] + ranks[1]["padding_batches"] > 0
        orders.append([r["order"] for r in ranks])
    assert orders[0] != orders[1]  # reshuffled for the second epoch
