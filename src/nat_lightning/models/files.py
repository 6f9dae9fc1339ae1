"""Weight files on disk: reading state dicts without running pickled code, atomic writes.

``.safetensors`` is read with safetensors; ``.bin``/``.pth``/``.pt`` with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        raise ValueError(
            f"{path} could not be read as a weights-only checkpoint (tensors and plain "
            f"containers; pickled code is refused): {err}"
        ) from err
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


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then move it onto ``path``.

    Readers see the old file or the complete new one, never a partial write.
    """
    path = Path(path)
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
