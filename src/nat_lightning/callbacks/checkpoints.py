"""Checkpoints a run can rely on: ``last.ckpt`` after every epoch, one file on an exception, and
every file written atomically.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when a top-k
checkpoint is written in the same step, so after the best epoch it goes stale. Lightning's
``OnExceptionCheckpoint`` makes ``Trainer.fit(ckpt_path=None)`` resume from ``"last"`` on its own
(the checkpoint connector checks for that class), so a second run in the same folder silently
continues the first. These two replace them; the CLI also keeps the top-k ModelCheckpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..files import write_atomically
from ..runs import LAST, ON_EXCEPTION


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


class BestCheckpoint(ModelCheckpoint):
    """Lightning's top-k ModelCheckpoint that never keeps an epoch whose monitored metric is NaN
    or infinite: such an epoch is not "best", and its file name would carry ``nan``. The epoch is
    named in a warning instead; ``last.ckpt`` is still written (LastCheckpoint)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Follow the task where the data decides its metric (a multi-label classifier keeps
        ``val/map``, not ``val/acc1``): a task's ``monitored(data)`` gives (monitor, file name),
        taken when this callback still has the task class's defaults (not the user's choice)."""
        task = type(pl_module)
        if hasattr(pl_module, "monitored") and self.monitor == getattr(task, "monitor", None):
            monitor, filename = pl_module.monitored(trainer.datamodule)
            if self.filename == getattr(task, "checkpoint_filename", None):
                self.filename = filename
            self.monitor = monitor
        super().setup(trainer, pl_module, stage)

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        # every rank decides together (reduce_boolean_decision is a collective on each of them)
        finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(current)), all=True)
        if not finite:
            rank_zero_warn(
                f"{self.monitor}={float(current)} at epoch {trainer.current_epoch}: not kept as a "
                "best checkpoint (a metric that is not finite ranks nothing; see the "
                "warnings above for its cause)"
            )
            return False
        return super().check_monitor_top_k(trainer, current)


class ExceptionCheckpoint(Callback):
    """Saves ``<dirpath>/on_exception.ckpt`` when fit ends in an exception: Ctrl-C, SIGTERM
    (Lightning turns it into an exception), or an error. A fit that fails before its first
    optimizer step (a bad argument, bad data caught in the sanity check) writes nothing: such a
    checkpoint holds no training, and ``--ckpt_path last`` would only restart from it."""

    def __init__(self, dirpath: str):
        """Args:
        dirpath: folder of the checkpoint; the run's ``checkpoints/`` folder under the CLI.
        """
        self.path = Path(dirpath) / ON_EXCEPTION

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        name = type(exception).__name__
        if trainer.global_step == 0:  # nothing trained: a checkpoint would only restart the run
            rank_zero_info(
                f"{name} before the first training step: no checkpoint written (nothing to "
                "resume); fix the cause and start the run again"
            )
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # a full state, to resume from
        rank_zero_info(
            f"{name} at step {trainer.global_step}: saved {self.path}; resume with --ckpt_path last"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through :func:`nat_lightning.files.write_atomically`: a reader (or a
    crash) never sees half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
