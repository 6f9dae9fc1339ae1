"""Reading weights without running pickled code; atomic writes."""

import os
import stat
from pathlib import Path

import pytest
import torch

from nat_lightning.files import read_state_dict, write_atomically


def test_nested_and_ddp_state_dicts_are_unwrapped(tmp_path):
    weights = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    torch.save({"model": weights, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "timm.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "ddp.pt")
    for name in ("timm.pth", "ddp.pt"):
        state = read_state_dict(tmp_path / name)
        assert state.keys() == weights.keys() and all(
            torch.equal(state[k], weights[k]) for k in weights
        )


def test_pickled_code_is_never_run(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="could not be read as a weights-only checkpoint"):
        read_state_dict(tmp_path / "evil.pth")
    assert "pwned" not in capsys.readouterr().out


def test_what_is_not_a_state_dict_is_an_error(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a weights-only checkpoint"):
        read_state_dict(tmp_path / "junk.bin")
    torch.save({"weight": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(
        ValueError, match="not a flat state dict: entries \\['step'\\] are not tensors"
    ):
        read_state_dict(tmp_path / "mixed.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, expected a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_write_atomically(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    write_atomically(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_checkpoint_is_read_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """Task choice, the CLI's --ckpt_path defaults and --ckpt_path last each ask the one reader;
    the file is read from disk once, and again only when it changes."""
    from nat_lightning import files
    from nat_lightning.runs import trained_steps
    from nat_lightning.task_choice import checkpoint_class

    path = tmp_path / "last.ckpt"
    torch.save(
        {"global_step": 3, "hyper_parameters": {"_class_path": "nat_lightning.NatSegmenter"}}, path
    )
    reads = []
    real = files.read_weights_only
    monkeypatch.setattr(files, "read_weights_only", lambda p: reads.append(p) or real(p))
    assert checkpoint_class(str(path)) == "nat_lightning.NatSegmenter"
    assert trained_steps(path) == 3
    assert files.read_lightning_checkpoint(path)["global_step"] == 3
    assert len(reads) == 1
    torch.save({"global_step": 4}, path)
    os.utime(path, ns=(1, 1))  # a new mtime, as a rewrite has
    assert files.read_lightning_checkpoint(path)["global_step"] == 4 and len(reads) == 2
