"""Report images that could not be decoded: Lightning has no hook or metric for data it never saw.

HFImageDataModule and HFSegmentationDataModule drop undecodable images (a segmentation pair when
its image or its mask is) in their collate functions and tally, per trainer stage, the examples
read, the undecodable ones and the first few of those by name (``datamodule.tallies``). At each epoch end this callback sums the counts over all ranks, logs
``data/skipped_<stage>`` (train, validate, test), warns on rank zero when some were skipped, stops
the run when more than the data module's ``max_skipped_fraction`` of them were, and resets them.

Every rank makes the same collective calls in the same order: one sum of the counts, and, only
when the summed counts (equal on every rank) exceed the limit, one broadcast from each rank of
its names. The sanity check's few batches are dropped on every rank without any collective.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ..data.images import MAX_NAMED, SkipTally


class SkippedImagesReport(Callback):
    """Logs ``data/skipped_{stage}``, warns once per epoch with the number of skipped images and
    raises a ValueError naming them when their share exceeds ``max_skipped_fraction``."""

    def _report(self, trainer, pl_module, stage: str, log: bool = True) -> None:
        tallies = getattr(trainer.datamodule, "tallies", None)
        if tallies is None:
            return
        if trainer.sanity_checking:  # a few batches, not an epoch: neither reported nor checked
            tallies.pop("sanity_check", None)
            return
        tally = tallies.pop(stage, SkipTally())
        local = torch.tensor([tally.skipped, tally.seen], device=pl_module.device)
        skipped, seen = trainer.strategy.reduce(local, reduce_op="sum").tolist()  # every rank
        if log:
            # already summed over the ranks: "max" of equal values is the value, and logging
            # it as synced keeps Lightning from warning (its all-reduce runs on every rank)
            pl_module.log(f"data/skipped_{stage}", float(skipped), sync_dist=True, reduce_fx="max")
        where = f"{stage} (epoch {trainer.current_epoch}, all ranks)"
        if skipped:
            example = f"; e.g. {tally.names[:3]}" if tally.names else ""
            rank_zero_warn(f"{skipped} of {seen} image(s) in {where} could not be decoded{example}")
        limit = trainer.datamodule.hparams.get("max_skipped_fraction")
        if limit is None or skipped <= limit * seen:
            return
        names = [
            name
            for rank in range(trainer.world_size)  # the same broadcasts, in order, on every rank
            for name in trainer.strategy.broadcast(tally.names, src=rank)
        ]
        named = f"the first {MAX_NAMED} per rank: {names}" if names else "none has a path"
        raise ValueError(
            f"{skipped} of {seen} images in {where} could not be decoded ({named}): "
            f"more than max_skipped_fraction={limit} of them; expected the images to exist where "
            "the dataset points (a wrong root?) and to be in a format PIL decodes (a missing "
            "codec?); raise max_skipped_fraction (1.0 never stops) to go on regardless"
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "predict", log=False)  # Lightning does not log in predict
