"""Two real DDP processes on the CPU, streaming with two DataLoader workers each: every example is
trained on exactly once per epoch across ranks and workers, every rank runs the same number of
steps, and nothing hangs (a hang fails the test after a timeout)."""

import json
import re

import pytest
from tests.runner import offline_env, run_module

from .ddp_run import BROKEN, TRAIN, VAL

TIMEOUT_S = 180


def run_ddp(tmp_path, *args: str) -> tuple[int, str]:
    """``python -m tests.data.ddp_run tmp_path *args``: its exit status and output; a failure
    when it runs past TIMEOUT_S (a hang)."""
    return run_module(
        "tests.data.ddp_run", str(tmp_path), *args, timeout=TIMEOUT_S, env=offline_env(tmp_path)
    )


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_streaming_ddp_reads_each_example_once_per_epoch(tmp_path, task):
    returncode, output = run_ddp(tmp_path, *([task] if task == "segmentation" else []))
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


@pytest.mark.slow
def test_tolerated_undecodable_images_are_one_line_from_rank_zero_summed_over_ranks(tmp_path):
    returncode, output = run_ddp(tmp_path, "tolerated")
    assert returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if "could not be decoded" in line]
    assert len(lines) == 1, output[-3000:]  # once, at the end of fit, on rank zero only
    # 46 rows read per epoch (the sampler repeats one), of which the broken ones, on both ranks
    found = re.search(
        r"(\d+) of 92 image\(s\) in train \(epochs 0-1, summed, all ranks\) could not be "
        r"decoded and were skipped, e\.g\. \[(.*)\]$",
        lines[0],
    )
    assert found is not None, lines[0]
    assert int(found.group(1)) in range(2 * len(BROKEN), 2 * len(BROKEN) + 3)
    rows = [int(row) for row in re.findall(r"'row (\d+)'", found.group(2))]
    assert len(set(rows)) == 5 and set(rows) <= set(BROKEN)
