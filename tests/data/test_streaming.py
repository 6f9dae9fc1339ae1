"""Streaming: ranks and workers partition every split exactly, and every rank yields as many
batches as the others. Ranks are simulated in one process with real DataLoader workers; the
two-process DDP run is in test_ddp.py."""

import math
import random

import pytest
from datasets import Image, load_dataset

from nat_lightning.data.columns import Columns
from nat_lightning.data.images import Collate, ExampleDecoder
from nat_lightning.data.sources import Split
from nat_lightning.data.streaming import (
    EvenLoader,
    StreamingExamples,
    plan_arrow,
    plan_stream,
    rank_stream,
)
from nat_lightning.data.transforms import eval_transform

from .conftest import coloured, ids_in

COLUMNS = Columns("img", "target", ("a", "b", "c", "d"), None)


def arrow_split(ids) -> Split:
    return Split("train", coloured(ids).cast_column("img", Image(decode=False)), len(list(ids)))


def rank_loader(
    split, rank, world, workers, batch, shuffle=True, epoch=lambda: 0, persistent=False
):
    stream, num_batches = rank_stream(
        split,
        shuffle=shuffle,
        seed=0,
        shuffle_buffer=8,
        rank=rank,
        world_size=world,
        workers=workers,
        batch_size=batch,
    )
    decoder = ExampleDecoder(COLUMNS, eval_transform(4, (0, 0, 0), (1, 1, 1), 1.0), random=False)
    return EvenLoader(
        StreamingExamples(stream, decoder),
        num_batches,
        epoch,
        Collate(4),
        batch_size=batch,
        num_workers=workers,
        persistent_workers=persistent,
    )


def run_ranks(split, world, workers, batch, **kwargs):
    """Per rank: (ids of real examples, number of batches, len(loader), padding batches)."""
    out = []
    for rank in range(world):
        loader = rank_loader(split, rank, world, workers, batch, **kwargs)
        batches = list(loader)
        padding = [b for b in batches if (b["labels"] == -100).all()]
        assert all((b["labels"] >= 0).all() for b in batches if not any(b is p for p in padding))
        out.append(
            ([i for b in batches for i in ids_in(b)], len(batches), len(loader), len(padding))
        )
    return out


# -- the bounds, against a brute-force model of how HF assigns shards ---------------------------


def arrow_batches(size, world, workers, batch, order):
    """Batches of each rank when HF deals the plan's shards (permuted by ``order``) to ranks,
    then workers."""
    plan = plan_arrow(size, world, workers, batch)
    if plan.strategy == "examples":
        return [math.ceil(len(range(r, size, world)) / batch) for r in range(world)], plan
    base, extra = divmod(size, plan.num_shards)
    sizes = [base + (s < extra) for s in range(plan.num_shards)]
    shards = [sizes[s] for s in order(plan.num_shards)]
    per_rank = [shards[r::world] for r in range(world)]
    return [
        sum(math.ceil(sum(mine[w::workers]) / batch) for w in range(workers)) for mine in per_rank
    ], plan


@pytest.mark.parametrize("size", [1, 3, 7, 37, 64, 100, 1001])
@pytest.mark.parametrize(
    "world,workers,batch", [(1, 1, 4), (2, 2, 4), (3, 2, 5), (4, 4, 7), (8, 3, 32)]
)
def test_arrow_plan_bounds_every_rank(size, world, workers, batch):
    rng = random.Random(size * 31 + world)
    for _ in range(20):
        batches, plan = arrow_batches(
            size, world, workers, batch, lambda n: rng.sample(range(n), n)
        )
        assert max(batches) <= plan.num_batches
        if plan.strategy == "shards":
            assert plan.num_shards % (world * workers) == 0 and plan.num_shards <= size


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 4), (2, 2, 4), (3, 2, 5), (4, 3, 7)])
def test_stream_plan_bounds_every_rank_for_any_file_sizes(world, workers, batch):
    rng = random.Random(world * 7 + workers)
    for _ in range(200):
        files = [
            rng.choice([0, 1, batch - 1, batch, batch + 1, rng.randrange(60)])
            for _ in range(rng.randrange(1, 9))
        ]
        plan = plan_stream(sum(files), len(files), world, workers, batch)
        per_worker = [
            sum(files[w::workers]) for w in range(workers)
        ]  # HF deals files to workers round-robin
        for rank in range(world):
            batches = sum(math.ceil(len(range(rank, m, world)) / batch) for m in per_worker)
            assert batches <= plan.num_batches, (files, rank)


# -- real HF streams and DataLoader workers -----------------------------------------------------


@pytest.mark.parametrize(
    "size,world,workers,batch,padded",
    [(37, 2, 2, 4, True), (5, 3, 2, 2, False), (64, 2, 2, 8, False), (1, 2, 2, 4, True)],
)
def test_arrow_ranks_read_each_example_once_in_step(size, world, workers, batch, padded):
    ranks = run_ranks(arrow_split(range(size)), world, workers, batch)
    seen = [i for ids, *_ in ranks for i in ids]
    assert sorted(seen) == list(range(size))
    assert len({n for _, n, _, _ in ranks}) == 1  # same number of batches on every rank...
    assert all(n == length for _, n, length, _ in ranks)  # ...and it is len(loader)
    assert (sum(p for *_, p in ranks) > 0) == padded  # short ranks were evened out with padding


def test_hub_like_stream_of_uneven_files_splits_by_example(tmp_path):
    files, start = [], 0
    for k, n in enumerate([10, 3, 17, 1]):
        coloured(range(start, start + n)).to_parquet(str(tmp_path / f"part{k}.parquet"))
        files.append(str(tmp_path / f"part{k}.parquet"))
        start += n
    stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
    split = Split("train", stream.cast_column("img", Image(decode=False)), start)
    ranks = run_ranks(split, world=2, workers=2, batch=3)
    assert sorted(i for ids, *_ in ranks for i in ids) == list(range(start))
    assert ranks[0][1] == ranks[1][1] == ranks[0][2]


def test_epochs_reshuffle_with_persistent_workers():
    epoch = {"value": 0}
    loader = rank_loader(
        arrow_split(range(32)), 0, 1, 2, 4, epoch=lambda: epoch["value"], persistent=True
    )
    orders = []
    for e in (0, 1, 0):
        epoch["value"] = e
        orders.append([i for b in loader for i in ids_in(b)])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(32))
    assert (
        orders[0] != orders[1] and orders[0] == orders[2]
    )  # seeded by epoch, seen by the live workers


def test_padding_batches_copy_the_shape_and_ignore_every_label():
    # 3 examples, 2 ranks of 1 worker, batch 2: rank 0 gets 2 real rows (1 batch), rank 1 one row
    loader = rank_loader(arrow_split(range(3)), 1, 2, 1, 1, shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    assert batches[-1]["labels"].tolist() == [-100] and batches[-1]["pixel_values"].shape == (
        1,
        3,
        4,
        4,
    )


def test_a_stream_without_a_size_cannot_keep_ranks_in_step(tmp_path):
    coloured(range(4)).to_parquet(str(tmp_path / "x.parquet"))
    stream = load_dataset(
        "parquet", data_files=str(tmp_path / "x.parquet"), split="train", streaming=True
    )
    with pytest.raises(
        ValueError,
        match="split 'train' is streamed without a declared number of examples.*world_size=2",
    ):
        rank_stream(
            Split("train", stream, None),
            shuffle=False,
            seed=0,
            shuffle_buffer=4,
            rank=0,
            world_size=2,
            workers=1,
            batch_size=2,
        )
    loader = rank_loader(
        Split("train", stream.cast_column("img", Image(decode=False)), None), 0, 1, 1, 3
    )
    assert sorted(i for b in loader for i in ids_in(b)) == [
        0,
        1,
        2,
        3,
    ]  # one process reads to the end
    with pytest.raises(TypeError):  # Lightning reads this as "length unknown"
        len(loader)
