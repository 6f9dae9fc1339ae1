"""Report what the data held that training never saw: images that could not be decoded, and
empty folders of an image folder. Lightning has no hook or metric for either.

HFImageDataModule and HFSegmentationDataModule drop undecodable images (a segmentation pair when
its image or its mask is) in their collate functions and tally, per trainer stage, the examples
read, the undecodable ones and the first few of those by name (``datamodule.tallies``). At each
epoch end this callback sums the counts over all ranks, logs ``data/skipped_<stage>`` (train,
validate, test), stops the run when more than the data module's ``max_skipped_fraction`` of
them were skipped, and resets them. At the end of the stage (fit, validate, test, predict) it
warns on rank zero with one line per trainer stage that skipped images, summed over the epochs
and the ranks, naming the first few, and one line naming the empty folders of an image folder
(``datamodule.empty_folders_note``): imagefolder makes no class of a folder without images.

Every rank makes the same collective calls in the same order: one sum of the counts, and, only
when the summed counts and the names gathered so far (equal on every rank) call for names, one
broadcast from each rank of its names. The sanity check's few batches are dropped on every rank
without any collective. The end-of-stage lines need no collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ..data.images import MAX_NAMED, SkipTally

SHOWN = 5  # names an end-of-stage line shows
FIT_STAGES = ("train", "validate")  # the trainer stages of a fit, as the tallies name them


@dataclass
class StageSkips:
    """One trainer stage's skipped images so far, over its epochs and all ranks."""

    skipped: int = 0
    seen: int = 0
    epochs: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the first SHOWN, from every rank

    def line(self, stage: str) -> str:
        first, last = min(self.epochs), max(self.epochs)
        when = f"epoch {first}" if first == last else f"epochs {first}-{last}, summed"
        named = ": " if self.skipped <= len(self.names) else ", e.g. "
        return (
            f"{self.skipped} of {self.seen} image(s) in {stage} ({when}, all ranks) could not be "
            "decoded and were skipped" + (f"{named}{self.names}" if self.names else "")
        )


class SkippedImagesReport(Callback):
    """Logs ``data/skipped_{stage}`` per epoch and raises a ValueError naming the skipped images
    when their share exceeds ``max_skipped_fraction``; warns once at the end of the stage."""

    def __init__(self):
        self.stages: dict[str, StageSkips] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.stages = {}

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
        total = self.stages.setdefault(stage, StageSkips())
        total.skipped, total.seen = total.skipped + int(skipped), total.seen + int(seen)
        total.epochs.append(trainer.current_epoch)
        limit = trainer.datamodule.hparams.get("max_skipped_fraction")
        too_many = limit is not None and skipped > limit * seen
        if not (too_many or (skipped and len(total.names) < SHOWN)):
            return
        names = [
            name
            for rank in range(trainer.world_size)  # the same broadcasts, in order, on every rank
            for name in trainer.strategy.broadcast(tally.names, src=rank)
        ]
        total.names += [n for n in dict.fromkeys(names) if n not in total.names][
            : SHOWN - len(total.names)
        ]
        if too_many:
            raise too_many_error(skipped, seen, stage, trainer.current_epoch, limit, names)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "predict", log=False)  # Lightning does not log in predict

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """The end of a stage that finished (Lightning skips it after an exception)."""
        for name in FIT_STAGES if stage == "fit" else (stage,):
            total = self.stages.pop(name, None)
            if total is not None and total.skipped:
                rank_zero_warn(total.line(name))
        if stage != "predict" and trainer.is_global_zero:
            note = getattr(trainer.datamodule, "empty_folders_note", None)
            if note:
                rank_zero_warn(note)


def too_many_error(
    skipped: int, seen: int, stage: str, epoch: int, limit: float, names: list[str]
) -> ValueError:
    named = f"the first {MAX_NAMED} per rank: {names}" if names else "none has a path"
    return ValueError(
        f"{skipped} of {seen} images in {stage} (epoch {epoch}, all ranks) could not be decoded "
        f"({named}): more than max_skipped_fraction={limit} of them; expected the images to exist "
        "where the dataset points (a wrong root?) and to be in a format PIL decodes (a missing "
        "codec?); raise max_skipped_fraction (1.0 never stops) to go on regardless"
    )
