import math

import pytest
import torch
from torch import nn

from nat_lightning import NatConfig, NatForImageClassification, NatForSemanticSegmentation
from nat_lightning.models.config import VARIANTS
from nat_lightning.models.nat import layer_ids_of, no_weight_decay_names
from nat_lightning.models.upernet_config import UperNetConfig
from nat_lightning.tasks.optim import (
    param_groups,
    schedule_length,
    warmup_cosine,
    warmup_poly,
    warmup_steps_decay,
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
    """Parameter names shaped like the NAT network's, with the layers it declares."""

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

    def layer_ids(self):
        ids = layer_ids_of("patch_embed", self.patch_embed, 0)
        for i, level in enumerate(self.levels):
            for j, block in enumerate(level["blocks"]):
                ids |= layer_ids_of(f"levels.{i}.blocks.{j}", block, 1 + 2 * i + j)
            ids |= layer_ids_of(f"levels.{i}.downsample", level["downsample"], 2 + 2 * i)
        return ids | {"rpb": 5, "gamma1": 5} | layer_ids_of("head", self.head, 5)

    def no_weight_decay(self):
        return no_weight_decay_names(self)


def test_no_weight_decay_on_norms_biases_rpb_and_layer_scale():
    toy = Toy()
    toy.norm, toy.conv = nn.LayerNorm(4), nn.Conv2d(4, 4, 3)
    assert no_weight_decay_names(toy) == {
        "patch_embed.bias",
        "rpb",
        "gamma1",
        "head.bias",
        "norm.weight",
        "norm.bias",
        "conv.bias",
        *(
            f"levels.{i}.{part}.bias"
            for i in range(2)
            for part in ("blocks.0", "blocks.1", "downsample")
        ),
    }


def decay_and_scale(model: nn.Module, drop: str = "") -> dict[str, tuple[float, float]]:
    """``{name: (weight_decay, lr_scale)}`` of the groups param_groups gives ``model``; ``drop`` is
    taken out of the names."""
    names = {id(p): n.replace(drop, "") for n, p in model.named_parameters()}
    groups = param_groups(model, 0.05, layer_decay=0.5)
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

    model = Toy()
    model.head.weight = FlatParameter(torch.zeros(6))  # what use_orig_params=False registers
    with pytest.raises(
        ValueError,
        match="'head.weight' is FSDP's flattened.*use_orig_params=False.*expected use_orig_params=True",
    ):
        param_groups(model, 0.05)


def test_layer_ids_follow_depth():
    ids = NatForImageClassification(
        LAYER_SCALED.replace(depths=[2, 3], num_heads=[1, 2])
    ).layer_ids()
    assert ids["nat.patch_embed.proj.0.weight"] == 0
    assert ids["nat.levels.0.blocks.0.attn.qkv.weight"] == 1
    assert ids["nat.levels.0.blocks.1.mlp.fc1.weight"] == 2
    assert ids["nat.levels.0.downsample.reduction.weight"] == 2  # with its stage's last block
    assert ids["nat.levels.1.blocks.2.norm1.weight"] == 5
    assert ids["nat.norm.weight"] == ids["head.weight"] == 6


def upernet(variant: str) -> NatForSemanticSegmentation:
    return NatForSemanticSegmentation(UperNetConfig.from_variant(variant, num_labels=3))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_of_every_variant_has_a_layer(variant):
    """Both networks of every variant, built on the meta device: the declared layer ids name
    each parameter exactly once, from 0 (the stem) to depth + 1 (norms and heads)."""
    with torch.device("meta"):
        for network in (
            NatForImageClassification(NatConfig.from_variant(variant)),
            upernet(variant),
        ):
            ids = network.layer_ids()
            assert sorted(ids) == sorted(n for n, _ in network.named_parameters())
            top = sum(NatConfig.from_variant(variant).depths) + 1
            assert set(ids.values()) == set(range(top + 1)), variant
            assert network.no_weight_decay() <= set(ids)


def test_a_parameter_without_a_layer_id_is_an_error():
    model = NatForImageClassification(LAYER_SCALED)
    model.adapter = nn.Linear(2, 2)  # a module added without declaring its layer
    with pytest.raises(
        ValueError, match="'adapter.weight' has no layer id: NatForImageClassification.layer_ids"
    ):
        param_groups(model, 0.05, layer_decay=0.8)


def test_param_groups_cover_every_parameter_once_with_layer_decay():
    model = Toy()
    groups = param_groups(model, 0.05, layer_decay=0.5)
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


def test_warmup_then_step_decay_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr_scale": 0.5}], lr=2.0)
    sched = warmup_steps_decay(opt, warmup_steps=2, total_steps=12, milestones=[0.5, 0.8])
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # the 10 steps after warmup: x1 before 5 of them, x0.1 from 5, x0.01 from 8
    expected = [1 / 3, 2 / 3] + [1.0] * 5 + [0.1] * 3 + [0.01] * 3
    assert lrs == pytest.approx(expected)


def test_lr_multipliers_by_name_prefix_stack_with_layer_decay():
    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.decode_head = (
                Toy(),
                nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)),
            )

        def layer_ids(self):
            ids = {f"backbone.{n}": layer for n, layer in self.backbone.layer_ids().items()}
            return ids | layer_ids_of("decode_head", self.decode_head, 5)

        def no_weight_decay(self):
            return no_weight_decay_names(self)

    model = Segmenter()
    groups = param_groups(model, 0.01, layer_decay=0.5, lr_mults={"backbone.": 0.1})
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
