"""Two real DDP processes on the CPU, streaming with two DataLoader workers each: every example is
trained on exactly once per epoch across ranks and workers, every rank runs the same number of
steps, and nothing hangs (a hang fails the test after a timeout)."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .ddp_run import BROKEN, TRAIN, VAL

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


def run_ddp(tmp_path, *args: str) -> tuple[int, str]:
    """``python -m tests.data.ddp_run tmp_path *args``: its exit status and output; a failure
    when it runs past TIMEOUT_S (a hang)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.data.ddp_run", str(tmp_path), *args],
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
    return process.returncode, output.decode()


@pytest.mark.slow
def test_streaming_ddp_reads_each_example_once_per_epoch(tmp_path):
    returncode, output = run_ddp(tmp_path)
    assert returncode == 0, output[-3000:]

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


@pytest.mark.slow
def test_too_many_undecodable_images_stop_every_rank_naming_rows_of_both(tmp_path):
    returncode, output = run_ddp(tmp_path, "broken")
    assert returncode != 0
    # 45 rows on 2 ranks: the DistributedSampler repeats one, so 46 are read
    message = re.search(
        r"ValueError: (\d+) of 46 images in train \(epoch 0, all ranks\) could not be decoded "
        r"\(the first 10 per rank: \[(.*?)\]\): more than max_skipped_fraction=0.5",
        output,
    )
    assert message is not None, output[-3000:]
    assert int(message.group(1)) in (len(BROKEN), len(BROKEN) + 1)
    rows = [int(row) for row in re.findall(r"'row (\d+)'", message.group(2))]
    assert len(rows) == 20 and set(rows) <= set(BROKEN)  # ten from each rank
    assert len(set(rows)) >= 19  # the ranks read different rows (one may be the repeated one)
