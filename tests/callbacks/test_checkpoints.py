"""Checkpoint writes are atomic: a failed write leaves the previous file and no debris."""

import os

import pytest
import torch

from nat_lightning.callbacks.checkpoints import AtomicCheckpointIO


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(4)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the old checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left
    io.save_checkpoint({"step": 3}, tmp_path / "new" / "x.ckpt")
    assert torch.load(tmp_path / "new" / "x.ckpt", weights_only=True) == {"step": 3}
