"""Weight files on disk: reading state dicts and checkpoints without running pickled code,
atomic writes.

``.safetensors`` is read with safetensors; every other file (``.bin``/``.pth``/``.pt``, Lightning's
``.ckpt``) by :func:`read_weights_only`, ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers. :func:`read_lightning_checkpoint` is the one reader of ``.ckpt``
files (task choice, ``--ckpt_path``, ``pretrained=``, export, ``--ckpt_path last``): it keeps the
last few it read, so a command reads each file once before Lightning restores it.
"""

from __future__ import annotations

import functools
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

# where training scripts nest the weights: timm/SHI-Labs ("model"), Lightning ("state_dict")
_NESTS = ("model", "state_dict")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a weights file, unwrapped from ``model``/``state_dict``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = read_weights_only(path)
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in _NESTS):
        state = next(state[k] for k in _NESTS if isinstance(state.get(k), dict))
    if not isinstance(state, dict):  # bad file content rather than a bad argument: ValueError
        kind = type(state).__name__
        raise ValueError(f"{path} holds a {kind}, expected a state dict")  # noqa: TRY004
    odd = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if odd:
        raise ValueError(f"{path} is not a flat state dict: entries {odd[:10]} are not tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_weights_only(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)`` onto the CPU, tensors memory-mapped where the file's
    format allows; a ValueError naming the file when it cannot be read that way."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, OSError) as err:
        raise ValueError(
            f"{path} could not be read as a weights-only checkpoint (tensors and plain "
            f"containers; pickled code is refused): {err}"
        ) from err


def read_lightning_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning ``.ckpt`` as its dict (see :func:`read_weights_only`). The last few files
    read are kept (while unchanged on disk): every part of a command asks this function."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    stat = path.stat()
    return _read_checkpoint(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_checkpoint(path: str, mtime_ns: int, size: int) -> dict:
    checkpoint = read_weights_only(path)
    if not isinstance(checkpoint, dict):
        kind = type(checkpoint).__name__
        raise ValueError(f"{path} holds a {kind}, expected a Lightning checkpoint (a dict)")  # noqa: TRY004
    return checkpoint


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, fsync it, then move it onto
    ``path`` (mode 0644). Every file the project writes goes through here: checkpoints, weights,
    configs, predictions and masks. Readers see the old file or the complete new one, never a
    partial write, and nothing is staged on another disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other files in the folder are world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
