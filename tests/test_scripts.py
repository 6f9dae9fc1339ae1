"""scripts/gpu_check.sh and scripts/gpu_wheels.sh on the CPU: what can go wrong before a GPU
machine is lent (a syntax error, a check that does not stop, a fit command line the CLI
rejects, a summary that misreads the metrics, wheels that do not fit the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "gpu_check.sh"
WHEELS = REPO / "scripts" / "gpu_wheels.sh"


def bash(*args: str, timeout: float, path_first: Path | None = None) -> subprocess.CompletedProcess:
    """``bash ARGS`` in the repository with this interpreter's ``python3`` first on PATH."""
    bins = [str(path_first)] if path_first else []
    env = {
        **os.environ,
        "PATH": os.pathsep.join([*bins, str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    return subprocess.run(
        ["bash", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sourced(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``script`` after sourcing gpu_check.sh (its functions, not its main)."""
    return bash("-c", f"source {CHECK}\n{script}", timeout=timeout)


@pytest.mark.parametrize("script", [CHECK, WHEELS], ids=lambda p: p.name)
def test_scripts_parse(script):
    result = bash("-n", str(script), timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    subprocess.run(
        ["bash", "-c", "command -v nvidia-smi"], capture_output=True, check=False
    ).returncode
    == 0,
    reason="this machine has nvidia-smi: the no-GPU path does not apply",
)
def test_without_a_gpu_the_check_says_so_and_exits_cleanly(tmp_path):
    report = tmp_path / "report"
    start = time.monotonic()
    result = bash(str(CHECK), str(report), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    summary = (report / "summary.md").read_text()
    assert "No CUDA device for torch" in summary and "sees no CUDA device" in summary
    assert "nvidia-smi -L: not found" in summary and "Nothing was installed or run" in summary
    assert sorted(p.name for p in report.iterdir()) == ["summary.md"]  # no step ran


def test_a_gpu_that_torch_cannot_use_is_a_failure(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    result = bash(str(CHECK), str(tmp_path / "report"), timeout=120, path_first=fake)
    summary = (tmp_path / "report" / "summary.md").read_text()
    if "sees no CUDA device" not in summary:
        pytest.skip("torch sees a CUDA device here")
    assert result.returncode == 1
    assert "nvidia-smi -L: GPU 0: NVIDIA H200" in summary


def test_steps_have_their_own_limits_and_a_failure_does_not_stop_the_next(tmp_path):
    result = sourced(
        f"""report={tmp_path}; rows=(); failed=0; fit_result=""; header="a machine"
        deadline=$((SECONDS + 60)); LIMIT[tests]=1; LIMIT[bench]=30
        run_step tests tests.log sleep 30
        run_step bench bench.log bash -c 'echo measured; exit 3'
        run_step setup setup.log true
        deadline=$((SECONDS + 6))
        run_step fit fit.log true
        echo "failed=$failed"
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "failed=1" in result.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert "a machine" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "step" not in line]
    assert rows[0].startswith("| tests | 124 |") and rows[0].endswith(
        "| 1 | tests.log (timed out) |"
    )
    assert rows[1].startswith("| bench | 3 |") and rows[1].endswith("| 30 | bench.log |")
    assert rows[2].startswith("| setup | 0 |")
    assert rows[3] == "| fit | not run | | | out of time |"
    assert (tmp_path / "bench.log").read_text() == "measured\n"


def test_fit_summary_reads_throughput_and_peak_memory(tmp_path):
    # the columns Lightning's CSVLogger writes for ThroughputMonitor and DeviceStatsMonitor
    peak = "DeviceStatsMonitor.on_train_batch_end/allocated_bytes.all.peak"
    reserved = "DeviceStatsMonitor.on_train_batch_end/reserved_bytes.all.peak"
    header = [
        "step",
        "train/device/samples_per_sec",
        "train/device/mfu",
        "train/samples",
        "train/time",
        peak,
        reserved,
    ]
    lines = [
        ",".join(header),
        f"9,,,,,{2 * 2**30},{3 * 2**30}",
        "19,100.0,0.1,1280,16.0,,",
        "29,300.0,0.3,1920,20.0,,",
        f"39,200.0,0.2,2560,24.0,{4 * 2**30},{5 * 2**30}",
    ]
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "smi.csv").write_text("1024, 40\n6144, 80\n[N/A], [N/A]\n")
    result = sourced(f"fit_summary {tmp_path}/metrics.csv {tmp_path}/smi.csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "- images/s: median 200.0 of 3 readings (ThroughputMonitor, 20-batch windows), last 200.0",
        (
            "- 2560 images in 24.0 s of training (validation excluded): 106.7 images/s with the first "
            "batches; last logged step 39"
        ),
        "- MFU: median 20.0%",
        "- peak GPU memory (torch, DeviceStatsMonitor): 4.00 GiB allocated, 5.00 GiB reserved",
        "- nvidia-smi over the fit: at most 6.00 GiB used, GPU busy 60 % on average (2 samples)",
    ]
    missing = sourced(f"fit_summary {tmp_path}/none.csv {tmp_path}/none.csv")
    assert missing.stdout.strip() == "- no metrics.csv (see fit.log)"


def test_the_fit_command_line_parses_with_the_real_cli(tmp_path):
    result = sourced(
        f'python3 -m nat_lightning "${{FIT_ARGS[@]}}" --trainer.default_root_dir {tmp_path}/fit '
        "--print_config",
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    config = result.stdout
    for expected in (
        "accelerator: gpu",
        "devices: '1'",
        "precision: bf16-mixed",
        "max_steps: 200",
        "lightning.pytorch.callbacks.DeviceStatsMonitor",
        "dataset: null",
        "image_size: 224",
        "model: nat_mini",
    ):
        assert expected in config
    assert not (tmp_path / "fit").exists()  # parsed only


def pypi_unreachable() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/datasets/", timeout=10).close()
    except OSError as err:
        return f"PyPI is unreachable from here ({err})"
    return None


@pytest.mark.slow
def test_gpu_wheels_downloads_what_the_image_lacks_for_its_python(tmp_path):
    if reason := pypi_unreachable():
        pytest.skip(reason)
    dest = tmp_path / "wheels"
    # hf-xet: one of the image's large packages, carried only because it is named
    result = bash(str(WHEELS), str(dest), "hf-xet", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = sorted(p.name for p in dest.iterdir())
    names = [w.split("-")[0].lower() for w in wheels]
    assert len(names) == len(set(names)), f"two versions of a package: {wheels}"
    for needed in (
        "datasets",
        "albumentations",
        "albucore",
        "jsonargparse",
        "docstring_parser",
        "typeshed_client",
        "pydantic",
        "pydantic_core",
        "dill",
        "multiprocess",
        "hf_xet",
    ):
        assert needed in names, f"{needed} missing from {wheels}"
    for large in (
        "torch",
        "numpy",
        "scipy",
        "pandas",
        "pyarrow",
        "pillow",
        "opencv_python_headless",
    ):
        assert large not in names
    for wheel in wheels:  # {name}-{version}-{python}-{abi}-{platform}.whl
        python, abi, platform = wheel.removesuffix(".whl").split("-")[-3:]
        assert python in ("py3", "py2.py3", "py312", "cp312") or abi == "abi3", wheel
        assert platform == "any" or ("manylinux" in platform and platform.endswith("x86_64")), wheel
    assert sum(p.stat().st_size for p in dest.iterdir()) < 40 * 2**20
