import math

import pytest
import torch
from torch import nn

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.tasks.optim import (
    layer_id,
    no_weight_decay,
    param_groups,
    schedule_length,
    warmup_cosine,
    warmup_poly,
)

# layer scale on, so that gamma1/gamma2 exist
LAYER_SCALED = NatConfig(
    embed_dim=16,
    depths=[1, 2],
    num_heads=[1, 2],
    kernel_size=3,
    mlp_ratio=1.0,
    layer_scale_init_value=1e-5,
    num_labels=3,
)


class Toy(nn.Module):
    """Parameter names shaped like the NAT network's."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(2, 2)
        self.levels = nn.ModuleList(
            nn.ModuleDict(
                {
                    "blocks": nn.ModuleList(nn.Linear(2, 2) for _ in range(2)),
                    "downsample": nn.Linear(2, 2),
                }
            )
            for _ in range(2)
        )
        self.rpb = nn.Parameter(torch.zeros(1, 3, 3))
        self.gamma1 = nn.Parameter(torch.ones(2))
        self.head = nn.Linear(2, 3)


def test_no_weight_decay_on_norms_biases_rpb_and_layer_scale():
    assert no_weight_decay(nn.Module(), "rpb")
    assert no_weight_decay(nn.Module(), "gamma1") and no_weight_decay(nn.Module(), "gamma2")
    assert no_weight_decay(nn.LayerNorm(4), "weight") and no_weight_decay(nn.LayerNorm(4), "bias")
    assert no_weight_decay(nn.Linear(4, 4), "bias") and no_weight_decay(nn.Conv2d(4, 4, 3), "bias")
    assert not no_weight_decay(nn.Linear(4, 4), "weight")
    assert not no_weight_decay(nn.Conv2d(4, 4, 3), "weight")


def decay_and_scale(model: nn.Module, drop: str = "") -> dict[str, tuple[float, float]]:
    """``{name: (weight_decay, lr_scale)}`` of the groups param_groups gives ``model``; ``drop`` is
    taken out of the names."""
    names = {id(p): n.replace(drop, "") for n, p in model.named_parameters()}
    groups = param_groups(model, 0.05, depths=LAYER_SCALED.depths, layer_decay=0.5)
    return {names[id(p)]: (g["weight_decay"], g["lr_scale"]) for g in groups for p in g["params"]}


class FsdpWrapped(nn.Module):
    """Puts ``_fsdp_wrapped_module.`` into the names below it, as FSDP's auto-wrapping does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._fsdp_wrapped_module = module


def shard_like_fsdp(model: nn.Module) -> None:
    """Every parameter becomes a 1-D tensor under the same name: FSDP's use_orig_params view of a
    rank's shard, which is part of the flattened tensor, or empty where the shard holds none of it.
    Each NAT block is wrapped as auto_wrap_policy=[NatBlock] wraps it."""
    for index, module in enumerate(list(model.modules())):
        for name, param in list(module.named_parameters(recurse=False)):
            flat = param.detach().reshape(-1)
            setattr(
                module, name, nn.Parameter(flat[: flat.numel() // 2] if index % 2 else flat[:0])
            )
    for level in model.nat.levels:
        for i, block in enumerate(level.blocks):
            level.blocks[i] = FsdpWrapped(block)


def test_weight_decay_groups_do_not_depend_on_shape():
    torch.manual_seed(0)
    model = NatForImageClassification(LAYER_SCALED)
    groups = decay_and_scale(model)
    # the oracle: the paper's rule, by shape, which holds on the unsharded model only: every 1-D
    # tensor (norms, biases, layer scales) and the rpb tables are not decayed
    paper = {
        n: 0.0 if p.ndim <= 1 or n.endswith(".rpb") else 0.05 for n, p in model.named_parameters()
    }
    assert {n: wd for n, (wd, _) in groups.items()} == paper
    assert groups["nat.levels.1.blocks.1.gamma2"][0] == 0.0
    assert groups["nat.levels.1.blocks.1.attn.qkv.weight"] == (0.05, 0.5)
    assert groups["nat.levels.0.downsample.reduction.weight"] == (0.05, 0.5**3)

    shard_like_fsdp(model)
    assert all(p.ndim == 1 for p in model.parameters())
    assert any("_fsdp_wrapped_module" in n for n, _ in model.named_parameters())
    assert decay_and_scale(model, drop="_fsdp_wrapped_module.") == groups


def test_fsdp_flat_parameters_cannot_be_grouped():
    from torch.distributed.fsdp._flat_param import FlatParameter

    model = nn.Linear(2, 2)
    model.weight = FlatParameter(torch.zeros(6))  # what use_orig_params=False registers
    with pytest.raises(
        ValueError,
        match="'weight' is FSDP's flattened.*use_orig_params=False.*expected use_orig_params=True",
    ):
        param_groups(model, 0.05, depths=[1])


def test_layer_ids_follow_depth():
    depths = [2, 3]
    assert layer_id("nat.patch_embed.proj.0.weight", depths) == 0
    assert layer_id("nat.levels.0.blocks.0.attn.qkv.weight", depths) == 1
    assert layer_id("nat.levels.0.blocks.1.mlp.fc1.weight", depths) == 2
    assert layer_id("nat.levels.0.downsample.reduction.weight", depths) == 2
    assert layer_id("nat.levels.1.blocks.2.norm1.weight", depths) == 5
    assert layer_id("head.weight", depths) == 6


def test_param_groups_cover_every_parameter_once_with_layer_decay():
    model = Toy()
    groups = param_groups(model, 0.05, depths=[2, 2], layer_decay=0.5)
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.head.weight)]["lr_scale"] == 1.0
    assert by_param[id(model.patch_embed.weight)]["lr_scale"] == 0.5**5
    assert by_param[id(model.rpb)]["weight_decay"] == 0.0
    assert by_param[id(model.head.weight)]["weight_decay"] == 0.05


def test_warmup_then_cosine_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr_scale": 0.5}], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5 * 1 / 5)
    assert lrs[3] == pytest.approx(0.5 * 4 / 5)
    assert lrs[4] == pytest.approx(0.5)  # peak right after warmup
    assert lrs[9] == pytest.approx(0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lrs[14] == pytest.approx(0.5 * 0.1)


def test_warmup_then_poly_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr_scale": 0.5}], lr=2.0)
    sched = warmup_poly(opt, warmup_steps=3, total_steps=13, min_lr_ratio=0.05, power=2.0)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0 * 1 / 4) and lrs[2] == pytest.approx(1.0 * 3 / 4)
    assert lrs[3] == pytest.approx(1.0)  # peak right after warmup
    # 4 of the 10 decay steps done: 0.05 + 0.95 * (1 - 0.4) ** 2
    assert lrs[7] == pytest.approx(0.05 + 0.95 * 0.36)
    assert lrs[13] == pytest.approx(0.05) and lrs[15] == pytest.approx(0.05)  # stays at the end


def test_lr_multipliers_by_name_prefix_stack_with_layer_decay():
    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.decode_head = (
                Toy(),
                nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)),
            )

    model = Segmenter()
    groups = param_groups(model, 0.01, depths=[2, 2], layer_decay=0.5, lr_mults={"backbone.": 0.1})
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert sorted(by_param) == sorted(id(p) for p in model.parameters())
    assert by_param[id(model.decode_head[0].weight)]["lr_scale"] == 1.0
    assert by_param[id(model.decode_head[0].weight)]["weight_decay"] == 0.01
    assert by_param[id(model.decode_head[1].weight)]["weight_decay"] == 0.0  # BatchNorm
    assert by_param[id(model.decode_head[0].bias)]["weight_decay"] == 0.0
    assert by_param[id(model.backbone.head.weight)]["lr_scale"] == pytest.approx(0.1)
    assert by_param[id(model.backbone.patch_embed.weight)]["lr_scale"] == pytest.approx(
        0.1 * 0.5**5
    )
    assert by_param[id(model.backbone.rpb)]["weight_decay"] == 0.0


class FakeTrainer:
    """What schedule_length reads of a Trainer."""

    def __init__(self, steps, batches, accumulate=1):
        self.estimated_stepping_batches, self.num_training_batches = steps, batches
        self.accumulate_grad_batches, self.train_dataloader = accumulate, object()


@pytest.mark.parametrize(
    ("steps", "batches", "accumulate", "epochs", "warmup_steps", "expected"),
    [
        (60, 26, 1, 1.0, None, (26, 60)),  # max_steps 60 with 26 batches an epoch: one epoch is 26
        (390, 26, 1, 1.0, None, (26, 390)),  # max_epochs 15
        (195, 26, 2, 1.0, None, (13, 195)),  # accumulating 2 batches: 13 steps an epoch
        (100, 26, 1, 0.5, None, (13, 100)),
        (100, 26, 1, 1.0, 7, (7, 100)),  # given in steps
        (10, 26, 1, 1.0, None, (10, 10)),  # never longer than the run
    ],
)
def test_schedule_length_follows_the_trainer(
    steps, batches, accumulate, epochs, warmup_steps, expected
):
    assert (
        schedule_length(FakeTrainer(steps, batches, accumulate), epochs, warmup_steps) == expected
    )


def test_an_unsized_stream_needs_max_steps_and_warmup_steps():
    with pytest.raises(ValueError, match="no length.*set trainer.max_steps"):
        schedule_length(FakeTrainer(float("inf"), float("inf")), 1.0)
    with pytest.raises(
        ValueError, match="warmup_epochs=1.0 needs the length of an epoch.*warmup_steps"
    ):
        schedule_length(FakeTrainer(100, float("inf")), 1.0)
    assert schedule_length(FakeTrainer(100, float("inf")), 1.0, warmup_steps=5) == (5, 100)
