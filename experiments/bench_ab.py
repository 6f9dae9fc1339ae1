"""The row kernel at two git revisions, alternating in one process: did a change make it faster?

    python experiments/bench_ab.py HEAD~1            # HEAD~1 against the working tree
    python experiments/bench_ab.py 5f66abc HEAD --mode infer

Loads ``src/nat_lightning/ops/rows.py`` as it is at each revision (beside the working tree's
other ops modules, so revisions whose helpers differ will not load) and times forward+backward
(``--mode train``) or forward only (``--mode infer``) at NAT-Mini's three attention shapes,
batch 16, k=7, fp32; the two alternate call by call, medians after two warm-up rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from pathlib import Path

import torch
from bench_choices import SHAPES, alternate  # experiments/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def load(rev: str | None, tag: str):
    """rows.py at ``rev`` (None: the working tree) as a module of nat_lightning.ops."""
    path = ROOT / "src/nat_lightning/ops/rows.py"
    if rev is not None:
        text = subprocess.run(
            ["git", "show", f"{rev}:src/nat_lightning/ops/rows.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = Path(tempfile.mkdtemp()) / "rows.py"
        path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"nat_lightning.ops._rows_{tag}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="git revision of the baseline")
    p.add_argument("b", nargs="?", help="git revision to compare (default: the working tree)")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=12)
    a = p.parse_args()
    kernels = {a.a: load(a.a, "a"), a.b or "working tree": load(a.b, "b")}
    train = a.mode == "train"
    print(
        f"{a.mode}, batch {a.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"| shape | {' ms | '.join(kernels)} ms | speed-up |\n|---|---:|---:|---:|")
    for side, heads in SHAPES.values():
        q, k, v = (
            torch.randn(a.batch, side, side, heads, 32, requires_grad=train) for _ in range(3)
        )
        rpb = torch.zeros(heads, 13, 13, requires_grad=train)

        def run(module, q=q, k=k, v=v, rpb=rpb):
            out = module.na2d_torch(q, k, v, 7, 1, rpb)
            if train:
                out.backward(torch.ones_like(out))

        med = alternate(
            {name: (lambda m=module: run(m)) for name, module in kernels.items()}, a.rounds
        )
        base, new = med.values()
        print(
            f"| ({a.batch}, {side}, {heads}, 32) | {base * 1e3:.1f} | {new * 1e3:.1f} | {base / new:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
