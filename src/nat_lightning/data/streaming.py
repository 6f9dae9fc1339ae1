"""Streaming: one rank's share of an HF IterableDataset, its DataLoader workers, equal-length ranks.

Why every example is read exactly once per epoch, and why no rank hangs:

1. Partition. Local and in-memory data become ``S = W * K * m`` contiguous shards of equal size
   (to one row) with ``Dataset.to_iterable_dataset(num_shards=S)``, for W ranks, K workers per rank
   and m shards per worker. ``split_dataset_by_node(strategy="shards")`` gives each rank S / W of
   them and HF's worker split gives each worker exactly m. Hub streams come in files of unknown,
   uneven sizes, so ranks split them by example (``strategy="examples"``: every rank reads the
   stream and keeps every W-th example) while each worker of a rank reads its own files. Shard
   order and shuffle buffer are seeded with ``seed`` and the epoch, identically on every rank, so
   the ranks' shares stay disjoint and cover the split.
2. Equal length. Under DDP every rank must run as many steps as the others, or one waits forever
   in the gradient all-reduce. Each rank's loader yields exactly ``num_batches``: an upper bound,
   computed from the split's size, on the real batches of any rank. After its real batches a rank
   yields padding batches, copies of its last batch with every label ignored (the collate
   function's ``padding``: nat_lightning.batch's IGNORE_LABEL for classes, IGNORE_PIXEL for
   masks), which the losses and metrics skip. Padding costs at most about K batches per epoch.
3. Epochs. The loader sets the dataset's epoch before each pass; HF keeps it in shared memory, so
   persistent workers see it and reshuffle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from .images import Collate, ExampleDecoder, Undecodable
from .sources import Split

SHARDS_PER_WORKER = 8  # more shards mix a class-sorted dataset better; padding grows with them


@dataclass(frozen=True)
class ShardPlan:
    num_shards: int | None  # shards to cut Arrow data into; None: keep the stream's own
    strategy: str  # how split_dataset_by_node divides the ranks: "shards" or "examples"
    num_batches: int  # batches every rank yields per pass, padding included


def plan_arrow(size: int, world_size: int, workers: int, batch_size: int) -> ShardPlan:
    """Arrow data of ``size`` rows: shards that divide evenly over ranks and workers."""
    streams = world_size * workers
    if size >= streams:
        per_worker_shards = min(SHARDS_PER_WORKER, size // streams)
        num_shards = streams * per_worker_shards
        # contiguous shards differ by at most one row
        per_worker_rows = per_worker_shards * math.ceil(size / num_shards)
        return ShardPlan(num_shards, "shards", workers * math.ceil(per_worker_rows / batch_size))
    # fewer rows than rank-worker pairs: one shard, read by worker 0 of every rank, split by example
    return ShardPlan(1, "examples", math.ceil(math.ceil(size / world_size) / batch_size))


def plan_stream(
    size: int, num_shards: int, world_size: int, workers: int, batch_size: int
) -> ShardPlan:
    """A stream of ``size`` rows in ``num_shards`` files of unknown sizes, split by example.

    Worker w reads M_w rows (sum M_w = size); rank r keeps ceil((M_w - r) / W), at most
    (M_w + W - 1) / W, of them; each worker's last batch may be partial. So a rank yields at most
    (size + K (W - 1) + K W (B - 1)) / (W B) batches, for the K workers that have files."""
    active = min(workers, num_shards)
    bound = (size + active * (world_size - 1) + active * world_size * (batch_size - 1)) // (
        world_size * batch_size
    )
    return ShardPlan(None, "examples", bound)


def rank_stream(
    split: Split,
    *,
    shuffle: bool,
    seed: int,
    shuffle_buffer: int,
    rank: int,
    world_size: int,
    workers: int,
    batch_size: int,
) -> tuple[IterableDataset, int | None]:
    """This rank's HF IterableDataset of ``split`` and the number of batches every rank yields
    (None: a stream of undeclared size on a single process, read to its end)."""
    workers = max(1, workers)
    if isinstance(split.data, Dataset):
        plan = plan_arrow(split.size, world_size, workers, batch_size)
        stream = split.data.to_iterable_dataset(num_shards=plan.num_shards)
    elif split.size is None:
        if world_size > 1:
            raise ValueError(
                f"split {split.name!r} is streamed without a declared number of examples, which "
                f"streaming under DDP (world_size={world_size}) needs to keep ranks in step; "
                "use streaming=False or a dataset whose metadata gives the split sizes"
            )
        plan, stream = None, split.data
    else:
        plan = plan_stream(split.size, split.data.n_shards, world_size, workers, batch_size)
        stream = split.data
    if shuffle:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if world_size > 1:
        stream = split_dataset_by_node(
            stream, rank=rank, world_size=world_size, strategy=plan.strategy
        )
    return stream, plan.num_batches if plan else None


class StreamingExamples(torch.utils.data.IterableDataset):
    """Decoded examples of an HF IterableDataset (an ``Undecodable`` for an image that cannot be
    decoded, which the collate function counts). In a DataLoader worker HF hands it that worker's
    shards.

    ``ids=(offset, step)`` labels the k-th example ``offset + k * step``: the row index in the
    split when one process reads this rank's every ``step``-th row (predict)."""

    def __init__(
        self, stream: IterableDataset, decoder: ExampleDecoder, ids: tuple[int, int] | None = None
    ):
        self.stream = stream
        self.decoder = decoder
        self.ids = ids

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict | Undecodable]:
        for k, row in enumerate(self.stream):
            # predict: the id is the row index; other streams are shuffled and have none
            row_id = None if self.ids is None else self.ids[0] + k * self.ids[1]
            yield self.decoder(row, row_id, row_id)


class EvenLoader(DataLoader):
    """A DataLoader over StreamingExamples that yields exactly ``num_batches`` batches per pass
    (padding after the real ones, see the module docstring) and sets the epoch before each pass."""

    def __init__(
        self,
        dataset: StreamingExamples,
        num_batches: int | None,
        epoch: Callable[[], int],
        collate_fn: Collate,
        **loader_args,
    ):
        super().__init__(dataset, collate_fn=collate_fn, **loader_args)
        self.num_batches = num_batches
        self.epoch = epoch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this stream has no declared length")
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        self.dataset.set_epoch(self.epoch())
        return self._padded(super().__iter__())

    def _padded(self, batches: Iterator[dict]) -> Iterator[dict]:
        count, last = 0, None
        for batch in batches:
            count += 1
            if self.num_batches is not None and count > self.num_batches:
                raise RuntimeError(
                    f"a rank produced more than num_batches={self.num_batches} batches: the "
                    "shard plan's bound is wrong, and ranks would fall out of step"
                )
            last = batch if len(batch["labels"]) else last
            yield batch
        for _ in range(count, self.num_batches or 0):
            yield self.collate_fn.padding(last, self.batch_size)
