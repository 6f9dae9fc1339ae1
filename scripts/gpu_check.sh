#!/usr/bin/env bash
# Everything a lent GPU machine should check, in one command that ends within 8 minutes.
#   bash scripts/gpu_wheels.sh                   # here first: the wheels it lacks, .gpu_wheels/
#   bash scripts/gpu_check.sh REPORT_DIR         # there, e.g. the device tool's run with
#        command "bash scripts/gpu_check.sh $OUT/gpu", carry [".gpu_wheels"], timeout_s 540
# Steps, each under its own time limit (timeout); a failing step does not stop the next:
#   setup  nvidia-smi; offline installs: the project's dependencies from .gpu_wheels/ (what the
#          image has stays), then the project (no dependencies, no build isolation); versions.
#          No NATTEN: its CUDA build takes far longer than a call.
#   tests  pytest -m gpu (a test module that fails to import does not stop the others)
#   bench  experiments/bench_gpu.py: NAT-Mini vs Swin-T bf16 training images/s and MFU, the
#          flex (and natten, if installed) backends against the torch backend
#   fit    configs/ddp_gpus.yaml on one GPU for 200 steps on the embedded digits at 224 px:
#          images/s (Lightning's ThroughputMonitor), peak GPU memory (DeviceStatsMonitor and
#          nvidia-smi, which also gives the GPU's utilisation)
# REPORT_DIR receives summary.md (each step's exit code and seconds, then its results; rewritten
# after every step), setup.log, tests.log, bench.log, bench_gpu.md, fit.log and fit_metrics.csv:
# seven files, within the eight that one device call brings back.
# Exit 0 when every step passed, else 1. Without a GPU it installs and runs nothing, writes
# summary.md saying so and exits 0; a GPU that torch cannot use is a failure (exit 1).
set -uo pipefail

# seconds: each step's limit, all of them together (timeout's kill grace and the summary fit
# inside 8 minutes)
declare -A LIMIT=([setup]=60 [tests]=90 [bench]=170 [fit]=140)
TOTAL=450
WHEELS=.gpu_wheels
REPORT_FILES=(summary.md setup.log tests.log bench.log bench_gpu.md fit.log fit_metrics.csv)
FIT_ARGS=(fit --config configs/ddp_gpus.yaml --trainer.devices 1 --trainer.max_steps 200
    --data.dataset null --data.image_size 224 --trainer.log_every_n_steps 10
    --trainer.enable_progress_bar false --trainer.callbacks+=DeviceStatsMonitor)

# The GPU as torch sees it, one line; where it sees none, the reason and exit 1.
cuda_device() {
    python3 - <<'PY'
import sys
try:
    import torch
except ImportError as err:
    print(f"torch is not importable ({err})")
    sys.exit(1)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA device")
    sys.exit(1)
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
}

setup() {
    set -x
    nvidia-smi
    [[ -d $WHEELS ]] || echo "no $WHEELS/: run scripts/gpu_wheels.sh and carry $WHEELS"
    local rc=0
    mapfile -t requirements < <(python3 -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
    python3 -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check \
        --no-cache-dir "${requirements[@]}" || rc=1
    python3 -m pip install --no-index --no-deps --no-build-isolation --disable-pip-version-check \
        --no-cache-dir -e . || rc=1
    python3 - <<'PY' || rc=1
import importlib.metadata as md, platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
for name in ("nat-lightning", "lightning", "torchmetrics", "triton", "timm", "torchvision", "datasets",
             "albumentations", "jsonargparse", "numpy", "pyarrow", "huggingface_hub", "natten"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import nat_lightning  # the project imports with what was installed
PY
    git log -1 --format='commit %H %s' 2>/dev/null || echo "commit: no git history here"
    git status --short 2>/dev/null
    python3 -m pip list --format=freeze --disable-pip-version-check
    return $rc
}

# Run step $1 (a command) under its limit, capped by what is left of TOTAL; log to $2.
run_step() {
    local name=$1 log=$2
    shift 2
    local limit=${LIMIT[$name]} left=$((deadline - SECONDS - 5))  # 5: timeout's kill grace
    if ((left < 5)); then
        rows+=("| $name | not run | | | out of time |")
        failed=1
        write_summary
        return
    fi
    ((limit > left)) && limit=$left
    local t0=$SECONDS rc note=""
    timeout -k 5 "$limit" "$@" >"$report/$log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && note=" (timed out)"
    ((rc != 0)) && failed=1
    rows+=("| $name | $rc | $((SECONDS - t0)) | $limit | $log$note |")
    write_summary
}

# The fit's results from its metrics.csv ($1) and nvidia-smi samples ($2: MiB used, % busy).
fit_summary() {
    python3 - "$1" "$2" <<'PY'
import csv, statistics, sys
from pathlib import Path

def read(path, **kw):
    return list(csv.DictReader(open(path), **kw)) if Path(path).is_file() else []

rows = read(sys.argv[1])
def values(key, suffix=False):
    return [float(v) for row in rows for k, v in row.items()
            if v and (k.endswith(key) if suffix else k == key)]

rates, mfu = values("train/device/samples_per_sec"), values("train/device/mfu")
samples, seconds, steps = values("train/samples"), values("train/time"), values("step")
if not rows:
    print("- no metrics.csv (see fit.log)")
elif not rates:
    print("- no images/s reading in metrics.csv (see fit.log)")
else:
    print(f"- images/s: median {statistics.median(rates):.1f} of {len(rates)} readings "
          f"(ThroughputMonitor, 20-batch windows), last {rates[-1]:.1f}")
if samples and seconds:
    print(f"- {samples[-1]:.0f} images in {seconds[-1]:.1f} s of training (validation excluded): "
          f"{samples[-1] / seconds[-1]:.1f} images/s with the first batches; "
          f"last logged step {max(steps, default=0):.0f}")
if mfu:
    print(f"- MFU: median {statistics.median(mfu):.1%}")
gib = 2**30
allocated = values("/allocated_bytes.all.peak", suffix=True)
reserved = values("/reserved_bytes.all.peak", suffix=True)
if allocated:
    print(f"- peak GPU memory (torch, DeviceStatsMonitor): {max(allocated) / gib:.2f} GiB allocated, "
          f"{max(reserved, default=0) / gib:.2f} GiB reserved")
smi = read(sys.argv[2], fieldnames=("mib", "busy"))
smi = [(float(r["mib"]), float(r["busy"])) for r in smi if r["busy"] and r["busy"].strip().isdigit()]
if smi:
    print(f"- nvidia-smi over the fit: at most {max(m for m, _ in smi) / 1024:.2f} GiB used, "
          f"GPU busy {statistics.mean(b for _, b in smi):.0f} % on average ({len(smi)} samples)")
PY
}

write_summary() {
    {
        echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "$header"
        echo
        if ((${#rows[@]})); then
            echo "| step | exit | seconds | limit s | log |"
            echo "|---|---:|---:|---:|---|"
            printf '%s\n' "${rows[@]}"
        fi
        if [[ -f $report/tests.log ]]; then
            echo -e "\n## tests (pytest -m gpu)\n"
            grep -E '^=+ .*(passed|failed|error|skipped|deselected|no tests ran)' "$report/tests.log" |
                tail -1 | grep . || echo "no pytest summary line (see tests.log)"
            grep -E '^(FAILED|ERROR) ' "$report/tests.log"
        fi
        if [[ -f $report/bench_gpu.md ]]; then
            echo -e "\n## bench (experiments/bench_gpu.py)\n"
            cat "$report/bench_gpu.md"
        fi
        if [[ -n $fit_result ]]; then
            echo -e "\n## fit (${FIT_ARGS[*]})\n"
            echo "$fit_result"
        fi
    } >"$report/summary.md"
}

main() {
    if (($# != 1)); then
        echo "usage: bash scripts/gpu_check.sh REPORT_DIR" >&2
        return 2
    fi
    mkdir -p "$1" && report=$(cd "$1" && pwd) || return 2
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || return 2
    deadline=$((SECONDS + TOTAL))
    rows=() failed=0 fit_result=""
    for f in "${REPORT_FILES[@]}"; do rm -f "$report/$f"; done
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WHEELS
    local gpus device
    if command -v nvidia-smi >/dev/null; then gpus=$(nvidia-smi -L 2>&1); else gpus="not found"; fi
    if ! device=$(cuda_device); then
        header="No CUDA device for torch: $device. nvidia-smi -L: ${gpus:-nothing}."
        header+=" Nothing was installed or run."
        write_summary
        echo "$header"
        [[ $gpus == GPU* ]] && return 1  # a GPU is there, but torch cannot use it
        return 0
    fi
    header="$device; driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
    header+="; $(git log -1 --format='commit %h' 2>/dev/null || echo 'no git history')"
    echo "$header"

    export -f setup
    run_step setup setup.log bash -c setup
    run_step tests tests.log python3 -m pytest -m gpu -v -rA --continue-on-collection-errors
    run_step bench bench.log python3 experiments/bench_gpu.py --out "$report/bench_gpu.md"

    local work sampler
    work=$(mktemp -d)
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 \
        >"$work/smi.csv" 2>/dev/null &
    sampler=$!
    run_step fit fit.log python3 -m nat_lightning "${FIT_ARGS[@]}" --trainer.default_root_dir "$work/fit"
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    cp "$work"/fit/version_0/metrics.csv "$report/fit_metrics.csv" 2>/dev/null
    fit_result=$(fit_summary "$report/fit_metrics.csv" "$work/smi.csv")
    write_summary
    rm -rf "$work"
    cat "$report/summary.md"
    return $failed
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
    exit
fi
