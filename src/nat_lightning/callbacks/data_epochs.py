"""Per-epoch data bookkeeping Lightning does not do for iterable datasets: the streaming shuffle
epoch, and the report of images skipped because they could not be decoded."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


class DataEpochs(Callback):
    """Calls ``datamodule.set_epoch(epoch)`` before each training epoch, and at each epoch end
    logs ``data/skipped_<stage>`` and warns when images were skipped (then resets the count)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        set_epoch = getattr(trainer.datamodule, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(trainer.current_epoch)

    def _report(self, trainer, pl_module, stage: str) -> None:
        skipped = getattr(trainer.datamodule, "skipped", None)
        if not skipped or not skipped.get(stage):
            return
        count = skipped.pop(stage)
        pl_module.log(f"data/skipped_{stage}", float(count), rank_zero_only=True)
        rank_zero_warn(f"{count} undecodable image(s) skipped during this {stage} epoch "
                       f"(epoch {trainer.current_epoch}, this process)")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test")
