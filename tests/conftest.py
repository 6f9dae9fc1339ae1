import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # copies of shared/fixtures, see its README


def pytest_configure(config):
    """Under ``pytest -n N`` each worker, and the CLI subprocesses it starts, gets its share of the
    cores. Two workers at two OpenMP threads each on 2 cores make every parallel region wait for a
    descheduled thread: a small fp64 gradcheck went from 1.4 s to 46 s with one core busy."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
