#!/usr/bin/env bash
# Download, here, the wheels that the GPU machine's image lacks for this project, for
# scripts/gpu_check.sh to install there offline (that machine reaches no registry).
#   bash scripts/gpu_wheels.sh                  # into .gpu_wheels/ (ignored by git); ~30 s
#   bash scripts/gpu_wheels.sh DIR [REQ ...]    # elsewhere; REQ: more requirements to carry
# Then name .gpu_wheels in the device call's carry (the tree and the carried paths travel
# within 64 MiB together; this stops above 40 MiB).
#
# The image has Python 3.12, torch 2.11 (CUDA 13), Lightning, torchmetrics, timm, numpy, scipy,
# pillow, opencv, matplotlib, transformers 5.17, huggingface_hub and more, but not datasets, albumentations or jsonargparse. The
# project's dependencies (pyproject.toml) less ON_IMAGE are resolved for that machine
# (CPython 3.12, manylinux x86-64, wheels only) and every wheel of the result is downloaded
# except those of LARGE. Small wheels of packages the image also has (typing_extensions, fsspec,
# pyyaml, ...) travel on purpose: pip there installs one only where the image's version does not
# meet a carried package's requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu_wheels}
shift $(($# > 0 ? 1 : 0))
# project dependencies the image already has; lightning and torchmetrics would also pull torch
# into the resolution
ON_IMAGE="torch lightning torchmetrics numpy scipy pillow opencv-python-headless matplotlib rich
    safetensors huggingface_hub transformers"
# packages the image has whose wheels are large: never carried
LARGE="torch triton numpy scipy pandas pyarrow pillow opencv-python-headless hf-xet"
MAX_MIB=40
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

canonical() { tr 'A-Z' 'a-z' | tr '_.' '--'; }  # PEP 503 names: typing-extensions

# shellcheck disable=SC2086  # ON_IMAGE: one argument per name
requirements=$(python3 - $ON_IMAGE <<'PY'
import re, sys, tomllib
canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()
on_image = {canonical(name) for name in sys.argv[1:]}
for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if canonical(re.match(r"[A-Za-z0-9._-]+", req).group(0)) not in on_image:
        print(req)
PY
)
mapfile -t wanted <<<"$requirements"
wanted+=("$@")
echo "resolving for CPython 3.12 manylinux x86-64: ${wanted[*]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip install --quiet --disable-pip-version-check --dry-run --ignore-installed \
    --target "$tmp/target" --report "$tmp/report.json" "${PLATFORM[@]}" "${wanted[@]}"

# explicit requirements are carried even when LARGE lists them (e.g. a newer pyarrow)
explicit=$(printf '%s\n' "$@" | sed -E 's/[^A-Za-z0-9._-].*//' | canonical | tr '\n' ' ')
skip=" $(echo "$LARGE" | canonical) "
pins=$(python3 -c '
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(item["metadata"]["name"], item["metadata"]["version"])
' "$tmp/report.json")
download=()
while read -r name version; do
    key=$(echo "$name" | canonical)
    if [[ $skip == *" $key "* && " $explicit " != *" $key "* ]]; then
        echo "left out (the image has it): $name $version"
    else
        download+=("$name==$version")
    fi
done <<<"$pins"

# into a fresh folder first: no stale second version of a package stays beside the new one
python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$tmp/wheels" \
    "${PLATFORM[@]}" "${download[@]}"
mkdir -p "$dest"
rm -f "$dest"/*.whl
mv "$tmp/wheels"/*.whl "$dest"/
mib=$(du -sm "$dest" | cut -f1)
echo "$(ls "$dest"/*.whl | wc -l) wheels, ${mib} MiB in $dest"
if ((mib > MAX_MIB)); then
    echo "$dest holds ${mib} MiB, over ${MAX_MIB} MiB: the device call carries 64 MiB with the tree" >&2
    exit 1
fi
