"""Images/s (and FLOP utilisation on GPUs whose peak Lightning knows) during training."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def images_in(batch) -> int:
    return len(batch["labels"])


class ImageThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor for the ``{"pixel_values", "labels"}`` batches of this project.

    FLOPs per batch come from ``NatClassifier.flops_per_batch`` (measured once with
    ``lightning.fabric.utilities.throughput.measure_flops`` on the meta device).
    """

    def __init__(self, window_size: int = 20):
        """Args:
        window_size: batches averaged over for each reading.
        """
        super().__init__(batch_size_fn=images_in, window_size=window_size)

    def _update(self, trainer, pl_module, batch, iter_num) -> None:
        # the one place every stage's batch goes through; a batch of undecodable images only
        # processed nothing (and Lightning's Throughput rejects fewer samples than batches)
        if images_in(batch):
            super()._update(trainer, pl_module, batch, iter_num)
