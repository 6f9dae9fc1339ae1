"""Evaluation splits under DDP (nat_lightning.data.sharding): every rank reads its share of the
val, test and predict rows, no row twice over the ranks, also when the split's size does not
divide by the number of processes; training keeps the sampler Lightning puts in."""

from types import SimpleNamespace

import pytest
from datasets import DatasetDict
from torch.utils.data import DistributedSampler, RandomSampler

from nat_lightning.data import HFImageDataModule, sharding
from nat_lightning.data.sharding import eval_sampler

from .conftest import PLAIN, coloured, id_of, write_images


@pytest.fixture(autouse=True)
def process_group(monkeypatch):
    """As inside a DDP run: a process group exists (the ranks are simulated one after another)."""
    monkeypatch.setattr(sharding, "in_process_group", lambda: True)


def on_rank(dm: HFImageDataModule, rank: int, world: int) -> HFImageDataModule:
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0)
    return dm


def test_ranks_split_the_rows_without_repeating_one():
    shares = [list(eval_sampler(range(7), rank, 3, "val_split", "v")) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]  # 7 rows, none twice, none left out
    assert eval_sampler(range(7), 0, 1, "val_split", "v") is None  # one process: all rows, in order


def test_outside_a_process_group_one_process_reads_every_row(monkeypatch):
    # e.g. the launching process of ddp_spawn, its datamodule still attached to the trainer
    monkeypatch.setattr(sharding, "in_process_group", lambda: False)
    assert eval_sampler(range(7), 0, 2, "val_split", "v") is None


def test_a_split_smaller_than_the_world_is_an_error():
    with pytest.raises(
        ValueError,
        match=r"test_split='tiny' selects 1 example\(s\) for world_size=2 processes; "
        r"expected at least one example per process",
    ):
        eval_sampler(range(1), 0, 2, "test_split", "tiny")


@pytest.mark.parametrize("world", [2, 3])
def test_val_and_test_loaders_read_each_row_once_over_the_ranks(world):
    data = DatasetDict(
        {
            "train": coloured(range(20)),
            "validation": coloured(range(100, 111)),
            "test": coloured(range(200, 209)),
        }
    )  # 11 and 9 rows: neither divides by 2 (nor 11 by 3)
    seen = {"val": [], "test": []}
    for rank in range(world):
        dm = on_rank(
            HFImageDataModule(data, test_split="test", **{**PLAIN, "batch_size": 4}), rank, world
        )
        dm.setup("fit")
        assert isinstance(dm.train_dataloader().sampler, RandomSampler)  # Lightning's to replace
        for role, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
            assert isinstance(loader.sampler, DistributedSampler)  # which Lightning keeps
            seen[role] += [id_of(p) for batch in loader for p in batch["pixel_values"]]
    assert sorted(seen["val"]) == list(range(100, 111))  # sorted lists: a repeat would show
    assert sorted(seen["test"]) == list(range(200, 209))


def test_a_held_out_validation_split_is_divided_too():
    seen = []
    for rank in range(2):
        dm = on_rank(HFImageDataModule(coloured(range(30)), val_fraction=0.1, **PLAIN), rank, 2)
        dm.setup("fit")
        seen += [id_of(p) for batch in dm.val_dataloader() for p in batch["pixel_values"]]
    assert len(seen) == 3 and len(set(seen)) == 3  # ceil(0.1 * 30) rows, each once


def test_predict_inputs_are_divided_once_each_with_their_ids(tmp_path):
    files = {f"{name}.png": i for i, name in enumerate("abcdefg")}
    files["d.png"] = "truncated"
    paths = write_images(tmp_path / "in", files)
    by_paths, by_rows = [], []
    for rank in range(2):
        dm = on_rank(
            HFImageDataModule(coloured(range(9)), predict_paths=str(tmp_path / "in"), **PLAIN),
            rank,
            2,
        )
        by_paths += [i for batch in dm.predict_dataloader() for i in batch["ids"]]
        dm = on_rank(
            HFImageDataModule(
                DatasetDict({"train": coloured(range(9)), "extra": coloured(range(50, 55))}),
                predict_split="extra",
                **PLAIN,
            ),
            rank,
            2,
        )
        by_rows += [i for batch in dm.predict_dataloader() for i in batch["ids"]]
    assert sorted(by_paths) == sorted(paths)  # the undecodable d.png is listed too
    assert sorted(by_rows) == list(range(5))


def test_too_small_a_split_names_the_argument_that_chose_it():
    data = DatasetDict({"train": coloured(range(20)), "validation": coloured([100])})
    with pytest.raises(ValueError, match=r"val_split='validation' selects 1 example\(s\)"):
        on_rank(HFImageDataModule(data, **PLAIN), 0, 2).val_dataloader()
    with pytest.raises(ValueError, match=r"val_fraction=0.05 selects 1 example\(s\)"):
        on_rank(
            HFImageDataModule(coloured(range(20)), val_fraction=0.05, **PLAIN), 1, 2
        ).val_dataloader()
