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
    """Checkpoints torch's, numpy's and Python's RNG states and restores them on resume.

    Restoring happens as the checkpoint is loaded, before the fit loop builds its first data
    iterator (a resumed fit fetches its first batch before ``on_train_start``); Lightning runs
    the sanity check under ``isolate_rng``, so it does not disturb the restored state.
    """

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
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
