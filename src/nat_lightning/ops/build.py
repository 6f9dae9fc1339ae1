"""Just-in-time build of the fused CPU kernel (``ops/csrc/``); ``python -m nat_lightning.ops.build``.

:func:`load` compiles ``csrc/na2d_cpu.cpp`` with ``torch.utils.cpp_extension.load`` on first use
(``-O3 -march=native -fopenmp``; about 20-40 s, announced in one line) into the torch extensions
cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), and later calls and
processes load the cached library. Where it cannot (no C++ compiler, no ninja, a failed build)
it warns once, naming the reason, and returns None: the pure-PyTorch kernels serve instead.
``NAT_LIGHTNING_FUSED=0`` skips the kernel without building or warning.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

CSRC = Path(__file__).parent / "csrc"
NAME = "nat_lightning_na2d_cpu"
ENV = "NAT_LIGHTNING_FUSED"
_state: dict = {"tried": False, "module": None, "reason": None}


def compile_flags() -> list[str]:
    """``-O3 -march=native -fopenmp``; on x86 also 512-bit vectors where the CPU has them."""
    flags = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")
    return flags


def _missing_tool() -> str | None:
    """Why the build cannot start, or None."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} is not on PATH (install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _is_built() -> bool:
    """A library in the cache newer than every source: loading it will not compile."""
    from torch.utils import cpp_extension

    try:  # the directory load() builds into: <cache>/<python and device tag>/<name>
        root = Path(cpp_extension._get_build_directory(NAME, verbose=False))
    except Exception:  # noqa: BLE001 - a private helper; without it, announce the (cached) load
        return False
    libraries = list(root.glob("*.so")) + list(root.glob("*.pyd"))
    newest_source = max(p.stat().st_mtime for p in CSRC.iterdir())
    return any(p.stat().st_mtime >= newest_source for p in libraries)


def _build(verbose: bool):
    from torch.utils import cpp_extension

    if not _is_built():
        print(
            "nat_lightning: building the fused CPU attention kernel (once, ~30 s) into the torch extensions cache",
            file=sys.stderr,
            flush=True,
        )
    return cpp_extension.load(
        NAME,
        sources=[str(CSRC / "na2d_cpu.cpp")],
        extra_cflags=compile_flags(),
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(CSRC)],
        verbose=verbose,
    )


def _verdict(message: str) -> str:
    """The compiler's first error line in a failed build's message, else its last line."""
    lines = message.strip().splitlines() or [""]
    return next((line.strip() for line in lines if "error:" in line), lines[-1])


def disabled_reason() -> str | None:
    """Why the kernel is off by configuration (``NAT_LIGHTNING_FUSED=0``), or None."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return f"{ENV}={os.environ[ENV]} turns it off"
    return None


def load(verbose: bool = False):
    """The compiled module (functions ``forward``, ``backward``; ``isa``), or None; builds once."""
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    reason = disabled_reason()
    if reason is not None:
        _state["reason"] = reason
        return None
    reason = _missing_tool()
    if reason is None:
        try:
            _state["module"] = _build(verbose)
        except Exception as error:  # noqa: BLE001 - any failure: the torch kernels serve
            reason = f"the build failed: {type(error).__name__}: {_verdict(str(error))}"
    if reason is not None:
        _state["reason"] = reason
        warnings.warn(
            f"nat_lightning: the fused CPU attention kernel is unavailable ({reason}); "
            f"the pure-PyTorch kernels serve instead. Set {ENV}=0 to skip it.",
            stacklevel=2,
        )
    return _state["module"]


def loaded():
    """The module if an earlier :func:`load` built it, else None; never builds."""
    return _state["module"]


def unavailable_reason() -> str | None:
    """Why :func:`load` returned None (after it ran), else None."""
    return _state["reason"]


def reset() -> None:
    """Forget the last :func:`load` (tests; a changed ``NAT_LIGHTNING_FUSED``)."""
    _state.update(tried=False, module=None, reason=None)


def main() -> int:
    """Pre-build the kernel (e.g. in a container image); exit status 1 when it cannot."""
    module = load(verbose="-v" in sys.argv[1:])
    if module is None:
        print(f"nat_lightning: fused CPU kernel not built: {unavailable_reason()}", file=sys.stderr)
        return 1
    print(f"nat_lightning: fused CPU kernel ready ({module.isa}, {module.lanes} lanes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
