"""sampler=balanced: classes drawn evenly, disjoint equal shares per rank, seeded by epoch."""

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from nat_lightning.data import HFImageDataModule, shapes_datamodule
from nat_lightning.data.balanced import BalancedSampler

LABELS = [0] * 900 + [1] * 90 + [2] * 10  # 90 % / 9 % / 1 %


def draws(sampler, epochs):
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.extend(sampler)
    return np.asarray(out)


def test_every_class_is_drawn_equally_often():
    indices = draws(BalancedSampler(LABELS, seed=0), epochs=30)  # 30,000 draws
    freq = np.bincount(np.asarray(LABELS)[indices], minlength=3) / len(indices)
    # binomial sd of a third over 30,000 draws: 0.0027; 4 sd
    assert np.allclose(freq, 1 / 3, atol=0.011), freq
    rare = indices[np.asarray(LABELS)[indices] == 2]
    assert len(set(rare.tolist())) == 10  # all 10 examples of the rare class, each repeated


def test_unlabelled_examples_are_never_drawn():
    labels = [0, -100, 1, -100, 1]
    assert not set(draws(BalancedSampler(labels), epochs=20).tolist()) & {1, 3}
    with pytest.raises(ValueError, match="sampler='balanced': no training example has a label"):
        BalancedSampler([-100, -100])


def test_two_ranks_take_disjoint_equal_shares_of_one_seeded_draw():
    one = BalancedSampler(LABELS, num_replicas=1, rank=0, seed=7)
    ranks = [BalancedSampler(LABELS, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == 500
        interleaved = [i for pair in zip(*shares) for i in pair]
        assert interleaved == list(one)  # the positions of one draw, dealt between the ranks
    again = BalancedSampler(LABELS, num_replicas=2, rank=0, seed=7)
    again.set_epoch(1)
    assert list(again) == shares[0]  # a rerun of the epoch (a resume) draws the same
    again.set_epoch(2)
    assert list(again) != shares[0]


def test_an_odd_split_gives_every_rank_the_same_count():
    ranks = [BalancedSampler(LABELS[:999], num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(list(s)) for s in ranks] == [500, 500]


def test_the_image_data_module_draws_its_training_split_balanced():
    data = HFImageDataModule.embedded(sampler="balanced", val_fraction=0.1)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler) and len(loader.sampler) == len(
        data.splits["train"].data
    )
    assert isinstance(loader.sampler, DistributedSampler)  # so Lightning keeps it under DDP
    labels = data.train_classes()
    assert labels.tolist() == list(data.splits["train"].data["label"])


def test_streams_and_segmentation_refuse_it():
    with pytest.raises(
        ValueError, match="sampler='balanced' with streaming=True: .* use streaming=False"
    ):
        HFImageDataModule.embedded(sampler="balanced", streaming=True)
    data = shapes_datamodule(sampler="balanced")
    data.setup("fit")
    with pytest.raises(
        ValueError,
        match="sampler='balanced' draws examples by their class, and "
        "HFSegmentationDataModule's examples have no single class",
    ):
        data.train_dataloader()
