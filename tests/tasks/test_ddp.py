"""Real 2-process runs on the CPU (gloo): a DDP fit with metrics synced across ranks, a backbone
frozen then thawed under DDP, and FSDP's weight-decay groups on sharded parameters."""

import json
import math
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from tests.runner import offline_env, run_module

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.tasks import NatClassifier
from nat_lightning.tasks.optim import param_groups

from . import ddp_run
from .test_classifier import digits

TINY = NatConfig(
    embed_dim=8, depths=[1], num_heads=[1], kernel_size=3, mlp_ratio=1.0, drop_path_rate=0.0
)


@pytest.mark.slow
def test_ddp_fit_syncs_validation_metrics_across_ranks(tmp_path):
    torch.manual_seed(0)
    dm = digits(image_size=16, batch_size=30)  # 180 validation images: 90 per rank, no padding
    model = NatClassifier(model=TINY, num_classes=10, lr=3e-3, warmup_epochs=0.0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    signal.alarm(240)
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        signal.alarm(0)
    logged = float(trainer.callback_metrics["val/acc1"])
    # the oracle: the trained weights (returned from rank 0) evaluated on the whole split here
    dm.setup("fit")
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            correct += int((model(batch["pixel_values"]).argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    assert total == 180
    assert logged == pytest.approx(correct / total, abs=1e-6)


# -- two real processes: freeze and thaw under DDP, FSDP's optimizer groups -----------------------

RUN_TIMEOUT_S = 300  # a run takes ~45 s on a busy 2-core machine; a hang fails the test


def run_two_processes(out: Path, mode: str) -> None:
    """``python -m tests.tasks.ddp_run out mode`` under a hard timeout that kills both ranks."""
    returncode, output = run_module(
        "tests.tasks.ddp_run", str(out), mode, timeout=RUN_TIMEOUT_S, env=offline_env(out)
    )
    assert returncode == 0, output[-3000:]


def snapshot(out: Path, rank: int, tag: str) -> dict:
    return torch.load(out / f"rank{rank}-{tag}.pt", weights_only=True)


def part(weights: dict, backbone: bool) -> dict:
    return {k: v for k, v in weights.items() if k.startswith("nat.") == backbone}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def differs_everywhere(a: dict, b: dict) -> bool:
    """Every tensor changed (the network has no buffers)."""
    return a.keys() == b.keys() and not any(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["freeze_backbone", "linear_probe"])
def test_a_frozen_backbone_under_ddp_stays_put_then_trains_in_step_on_every_rank(tmp_path, mode):
    run_two_processes(tmp_path, mode)
    start = [snapshot(tmp_path, r, "start") for r in (0, 1)]
    frozen = [snapshot(tmp_path, r, "epoch0") for r in (0, 1)]
    end = [snapshot(tmp_path, r, "epoch1") for r in (0, 1)]
    assert same(start[0]["weights"], start[1]["weights"])  # DDP started both ranks from rank 0's
    for rank in (0, 1):
        begin = start[rank]["weights"]
        # epoch 0: 3 steps, the head trained, the backbone bit for bit as it was (no weight
        # decay either) and without AdamW state (no moments to carry into the thaw)
        assert same(part(frozen[rank]["weights"], True), part(begin, True))
        assert differs_everywhere(part(frozen[rank]["weights"], False), part(begin, False))
        assert frozen[rank]["with_state"] == ["head.bias", "head.weight"]
        thawed = mode == "freeze_backbone"
        # a backbone that thaws keeps requires_grad (DDP registered it) and pays its backward;
        # a linear probe's never requires grad, so no backward runs through it
        assert len(frozen[rank]["trainable"]) == (len(begin) if thawed else 2)
        assert differs_everywhere(part(end[rank]["weights"], True), part(begin, True)) == thawed
        assert same(part(end[rank]["weights"], True), part(begin, True)) != thawed
        assert len(end[rank]["with_state"]) == (len(begin) if thawed else 2)
    # 3 more steps after the thaw: the ranks trained on different batches, so only all-reduced
    # gradients keep their weights identical
    assert same(end[0]["weights"], end[1]["weights"])
    assert same(frozen[0]["weights"], frozen[1]["weights"])


@pytest.mark.slow
def test_fsdp_groups_decay_by_name_on_sharded_parameters(tmp_path):
    """configs/fsdp_gpus.yaml's strategy on the CPU: each rank sees 1-D shards (some empty), and
    the optimizer groups still decay exactly the weights the paper's rule decays on the whole
    model."""
    run_two_processes(tmp_path, "fsdp")
    network = NatForImageClassification(ddp_run.TINY.replace(num_labels=10))
    shapes = {n: p.shape for n, p in network.named_parameters()}
    # the oracle: the paper's rule by shape, which holds on the unsharded model
    paper = {n: 0.0 if len(s) <= 1 or n.endswith(".rpb") else 0.05 for n, s in shapes.items()}
    names = {id(p): n for n, p in network.named_parameters()}
    plain = {  # layer decay 0.5 as the run, on the unsharded model
        names[id(p)]: (g["weight_decay"], g["lr_scale"])
        for g in param_groups(network, 0.05, 0.5)
        for p in g["params"]
    }
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}-groups.json").read_text())
        assert record["wrapped"]  # auto_wrap_policy wrapped the blocks
        rows = record["groups"]
        assert sorted(r["name"] for r in rows) == sorted(shapes)  # each parameter once
        assert all(len(r["shape"]) == 1 for r in rows)  # FSDP's flattened views
        assert any(r["shape"] == [0] for r in rows)  # wholly in the other rank's shard
        assert {r["name"]: r["weight_decay"] for r in rows} == paper
        assert {r["name"]: (r["weight_decay"], r["lr_scale"]) for r in rows} == plain
        end = json.loads((tmp_path / f"rank{rank}-end.json").read_text())
        assert end["step"] == 3 and math.isfinite(end["loss"])
