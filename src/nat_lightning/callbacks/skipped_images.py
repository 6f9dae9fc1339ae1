"""Report images that could not be decoded: Lightning has no hook or metric for data it never saw.

HFImageDataModule drops undecodable images in its collate function and counts them per trainer
stage in ``datamodule.skipped``. At each epoch end this callback sums the count over all ranks,
logs it as ``data/skipped_<stage>`` (train, validate, test), warns on rank zero when it is not
zero, and resets it.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


class SkippedImagesReport(Callback):
    """Logs ``data/skipped_{stage}`` and warns once per epoch with the number of skipped images."""

    def _report(self, trainer, pl_module, stage: str, log: bool = True) -> int | None:
        counts = getattr(trainer.datamodule, "skipped", None)
        if counts is None or trainer.sanity_checking:
            if counts is not None:
                counts.pop("sanity_check", None)
            return None
        local = torch.tensor(counts.pop(stage, 0), device=pl_module.device)
        total = int(
            trainer.strategy.reduce(local, reduce_op="sum")
        )  # every rank calls this collective
        if log:
            pl_module.log(f"data/skipped_{stage}", float(total), sync_dist=False)
        if total:
            rank_zero_warn(
                f"{total} undecodable image(s) skipped in {stage} (epoch {trainer.current_epoch}, "
                "all ranks)"
            )
        return total

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "predict", log=False)  # Lightning does not log in predict
