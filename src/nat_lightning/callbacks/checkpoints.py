"""Checkpoints a run can rely on: ``last.ckpt`` after every epoch, one file on an exception, and
every file written atomically.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when a top-k
checkpoint is written in the same step, so after the best epoch it goes stale. Lightning's
``OnExceptionCheckpoint`` makes ``Trainer.fit(ckpt_path=None)`` resume from ``"last"`` on its own
(the checkpoint connector checks for that class), so a second run in the same folder silently
continues the first. These two replace them; the CLI also keeps the top-k ModelCheckpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

LAST = "last.ckpt"
ON_EXCEPTION = "on_exception.ckpt"


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` at the end of every epoch (or every N optimizer steps),
    whatever the monitored metric did."""

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None):
        """Args:
        dirpath: folder of the checkpoint; the run's ``checkpoints/`` folder under the CLI.
        every_n_train_steps: rewrite it every N optimizer steps instead of every epoch.
        """
        super().__init__(
            dirpath=dirpath,
            filename=Path(LAST).stem,
            monitor=None,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )


class ExceptionCheckpoint(Callback):
    """Saves ``<dirpath>/on_exception.ckpt`` when fit ends in an exception: Ctrl-C, SIGTERM
    (Lightning turns it into an exception), or an error."""

    def __init__(self, dirpath: str):
        """Args:
        dirpath: folder of the checkpoint; the run's ``checkpoints/`` folder under the CLI.
        """
        self.path = Path(dirpath) / ON_EXCEPTION

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # a full state, to resume from
        rank_zero_info(
            f"{type(exception).__name__}: saved {self.path}; resume with --ckpt_path last"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, then ``os.replace``: a
    reader (or a crash) never sees half a checkpoint, and nothing is staged on another disk."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
