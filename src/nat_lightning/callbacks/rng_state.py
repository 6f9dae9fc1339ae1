"""Save and restore the random number generators with the checkpoint, so that a run resumed from
an end-of-epoch checkpoint draws the same shuffles, augmentations, mixup and drop-path masks as
an uninterrupted run (Lightning seeds once but does not checkpoint RNG state)."""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def _numpy_state() -> tuple:
    """numpy's MT19937 state with the key array as a tensor: loadable with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


class RNGState(Callback):
    def __init__(self):
        self._restored: dict | None = None

    def state_dict(self) -> dict:  # called when a checkpoint is written: capture now
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        """Restore after the sanity check and before the first epoch's data iterator."""
        if self._restored is None:
            return
        state, self._restored = self._restored, None
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
