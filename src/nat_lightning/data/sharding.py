"""How the ranks divide a map-style evaluation split (val, test, predict) under DDP: without padding.

Lightning's DistributedSampler gives every rank ``ceil(N / W)`` rows by repeating the first rows of
the split, so an example read twice counts twice in val/test metrics. Evaluation loaders therefore
bring Lightning's UnrepeatedDistributedSampler (the one Lightning itself puts into predict
loaders): rank r reads rows r, r + W, r + 2W, ... of the split, each row once over all ranks.
Lightning keeps a DistributedSampler it finds in a loader (whatever ``use_distributed_sampler``
says) and, for predict, only wraps it to record the indices of each batch. Training keeps
Lightning's sampler: gradient steps need equal batch counts, and a repeated training example is
harmless. The sampler itself communicates nothing: it reads the rank and world size only.

Ranks may then run one evaluation batch more than others. This is safe because evaluation issues
no collective per batch: the classifier's metrics and ``sync_dist`` logs of on-epoch values
synchronise once at the epoch's end, where every rank arrives; DDP's forward, which wraps the
model only during fit, broadcasts buffers only in the first no-grad forward after a training step,
which every rank runs as long as it has a batch. Hence every rank needs at least one row: a rank
with none would skip the whole evaluation loop and its epoch-end collectives, and the others would
wait for it forever. A split smaller than the number of processes is therefore an error.
"""

from __future__ import annotations

from collections.abc import Sized

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler


def eval_sampler(
    rows: Sized, rank: int, world_size: int, field: str, value: object
) -> UnrepeatedDistributedSampler | None:
    """This rank's rows of an evaluation split, none repeated (None: this process reads them all).

    Only inside a process group: a datamodule still attached to a DDP trainer whose run has ended
    (e.g. in the launching process of ``ddp_spawn``) gives the whole split, as it did before the
    run. ``field`` and ``value`` name the argument that chose the split, for the error when it
    has fewer rows than there are processes."""
    if world_size == 1 or not in_process_group():
        return None
    if len(rows) < world_size:
        raise ValueError(
            f"{field}={value!r} selects {len(rows)} example(s) for world_size={world_size} "
            "processes; expected at least one example per process (evaluate with fewer devices "
            "or on a larger split)"
        )
    return UnrepeatedDistributedSampler(rows, num_replicas=world_size, rank=rank, shuffle=False)


def in_process_group() -> bool:
    """Whether this process belongs to an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()
