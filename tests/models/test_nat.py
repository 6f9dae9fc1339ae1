"""The networks against transformers 4.40.2 + NATTEN 0.17.5 outputs (shared/fixtures), and more."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tests.conftest import FIXTURES

from nat_lightning import NatBackbone, NatConfig, NatForImageClassification, NatModel
from nat_lightning.models.nat import NatBlock, NeighborhoodAttention2D, _weighted_values
from nat_lightning.ops import na2d

FIXTURE_NAMES = ["hf_nat_tiny_random", "hf_dinat_tiny_random"]
REL = 1e-4  # max |error| / max |expected|, per tensor


def tiny(**overrides) -> NatConfig:
    base = {
        "embed_dim": 16,
        "depths": [1, 2],
        "num_heads": [1, 2],
        "kernel_size": 3,
        "mlp_ratio": 2.0,
        "num_labels": 4,
    }
    return NatConfig(**{**base, **overrides})


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fixture_parity_with_transformers(name, backend):
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model = NatForImageClassification.from_pretrained(
        FIXTURES / name, attention_backend=backend
    ).eval()
    with torch.no_grad():
        out = model(expected["pixel_values"], output_hidden_states=True, output_attentions=True)
    got = {"logits": out.logits}
    got.update({f"reshaped_hidden_states.{i}": h for i, h in enumerate(out.reshaped_hidden_states)})
    got.update({f"attentions.{i}": a for i, a in enumerate(out.attentions)})  # over the padded maps
    assert got.keys() == expected.keys() - {"pixel_values"}
    for key, value in got.items():
        assert value.shape == expected[key].shape, key
        assert relative_error(value, expected[key]) < REL, key
    for state, reshaped in zip(out.hidden_states, out.reshaped_hidden_states):
        assert torch.equal(state.permute(0, 3, 1, 2), reshaped)  # channels-last twins


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_backbone_parity_with_transformers(name):
    """transformers' backbone: stages before downsampling through fresh LayerNorms (1, 0).
    The fixture's stem and last stage are such states (the last stage has no downsampler)."""
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    backbone = NatBackbone.from_pretrained(FIXTURES / name, out_features=["stem", "stage4"]).eval()
    with torch.no_grad():
        maps = backbone(expected["pixel_values"]).feature_maps
    for got, key in zip(maps, ["reshaped_hidden_states.0", "reshaped_hidden_states.4"]):
        state = expected[key].permute(0, 2, 3, 1)
        oracle = F.layer_norm(state, state.shape[-1:]).permute(0, 3, 1, 2)
        assert relative_error(got, oracle) < REL


def test_outputs_shapes_and_transformers_style_access():
    model = NatForImageClassification(tiny()).eval()
    out = model(
        torch.randn(2, 3, 32, 40),
        labels=torch.tensor([0, 3]),
        output_hidden_states=True,
        output_attentions=True,
    )
    assert out.logits.shape == (2, 4) and out.loss.ndim == 0
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 8, 10, 16),
        (2, 4, 5, 32),
        (2, 4, 5, 32),
    ]
    assert [tuple(h.shape) for h in out.reshaped_hidden_states] == [
        (2, 16, 8, 10),
        (2, 32, 4, 5),
        (2, 32, 4, 5),
    ]
    assert [tuple(a.shape) for a in out.attentions] == [(2, 1, 8, 10, 9), (2, 2, 4, 5, 9)]
    assert out[0] is out.loss and out[1] is out.logits and out["logits"] is out.logits
    base = NatModel(tiny()).eval()
    plain = base(torch.randn(1, 3, 32, 32))
    assert plain.last_hidden_state.shape == (1, 4, 4, 32) and plain.pooler_output.shape == (1, 32)
    assert plain.hidden_states is None and plain.attentions is None and len(plain.to_tuple()) == 2
    torch.testing.assert_close(plain.pooler_output, plain.last_hidden_state.mean((1, 2)))
    assert (
        NatModel(tiny(), add_pooling_layer=False)(torch.randn(1, 3, 32, 32)).pooler_output is None
    )


@pytest.mark.parametrize("size", [(17, 23), (8, 8), (63, 45), (1, 1)])
def test_any_input_size_including_maps_smaller_than_the_window(size):
    model = NatForImageClassification(tiny(kernel_size=7, dilations=[[2], [1, 3]])).eval()
    out = model(torch.randn(1, 3, *size), output_attentions=True)
    assert out.logits.shape == (1, 4) and torch.isfinite(out.logits).all()
    h, w = -(-size[0] // 4), -(-size[1] // 4)  # ceil: stride-2 convolutions with padding 1
    assert out.attentions[0].shape == (
        1,
        1,
        max(h, 14),
        max(w, 14),
        49,
    )  # padded to kernel * dilation


def test_pixel_values_are_checked():
    with pytest.raises(
        ValueError,
        match="pixel_values must be \\(batch, 3, height, width\\), got .*\\(2, 1, 32, 32\\)",
    ):
        NatModel(tiny())(torch.randn(2, 1, 32, 32))


def test_losses():
    model = NatForImageClassification(tiny()).eval()
    x = torch.randn(3, 3, 32, 32)
    logits = model(x).logits
    soft = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    expected = -(soft * torch.log(torch.softmax(logits, -1))).sum(-1).mean()
    torch.testing.assert_close(model(x, labels=soft).loss, expected)
    only_first = model(x, labels=torch.tensor([1, -100, -100])).loss
    torch.testing.assert_close(only_first, -torch.log_softmax(logits[0], -1)[1])
    with pytest.raises(
        ValueError,
        match="soft targets and must have the logits' shape \\(3, 4\\), got labels.shape=\\(3,\\)",
    ):
        model(x, labels=torch.tensor([0.0, 1.0, 2.0]))
    regression = NatForImageClassification(tiny(num_labels=1)).eval()
    target = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(
        regression(x, labels=target).loss, ((regression(x).logits[:, 0] - target) ** 2).mean()
    )


def test_no_head_when_num_labels_is_zero():
    model = NatForImageClassification(tiny(num_labels=0)).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x).logits, model.nat(x).pooler_output)


def test_init_follows_transformers():
    model = NatForImageClassification(
        tiny(layer_scale_init_value=0.1, embed_dim=64, num_heads=[2, 4])
    )
    block = model.nat.levels[1].blocks[0]
    assert torch.equal(block.attn.rpb, torch.zeros_like(block.attn.rpb))
    assert torch.equal(block.gamma1, torch.full((128,), 0.1)) and torch.equal(
        block.gamma2, block.gamma1
    )
    assert torch.equal(block.norm1.weight, torch.ones(128)) and torch.equal(
        block.norm1.bias, torch.zeros(128)
    )
    assert torch.equal(block.attn.qkv.bias, torch.zeros(384))
    weights = torch.cat(
        [
            block.attn.qkv.weight.flatten(),
            block.mlp.fc1.weight.flatten(),
            model.head.weight.flatten(),
        ]
    )
    assert (
        weights.std().item() == pytest.approx(0.02, rel=0.05) and abs(weights.mean().item()) < 1e-3
    )
    assert model.nat.patch_embed.proj[0].weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_drop_path_only_in_training():
    model = NatForImageClassification(tiny(drop_path_rate=0.5))
    rates = [block.drop_path.p for level in model.nat.levels for block in level.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])  # linear over all blocks
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)
    model.train()
    torch.manual_seed(0)
    a = model(x).logits
    torch.manual_seed(1)
    assert not torch.equal(a, model(x).logits)


def test_block_residuals_drop_whole_samples_and_scale_the_kept_ones():
    """The fused residual (addcmul) against the formula written out: x + drop(gamma * branch),
    drop keeping a sample with probability 1-p and dividing it by 1-p."""
    torch.manual_seed(0)
    config = tiny(layer_scale_init_value=0.3)
    block = NatBlock(config, 16, 2, 1, drop_path=0.5).train()
    x = torch.randn(32, 9, 9, 16, dtype=torch.float64)
    block.double()
    torch.manual_seed(3)
    got, _ = block(x)
    torch.manual_seed(3)  # the same draws, in the same order: one per residual
    keep1 = torch.empty(32, 1, 1, 1, dtype=torch.float64).bernoulli_(0.5)
    keep2 = torch.empty(32, 1, 1, 1, dtype=torch.float64).bernoulli_(0.5)
    mid = x + keep1 / 0.5 * (block.gamma1 * block.attn(block.norm1(x))[0])
    expected = mid + keep2 / 0.5 * (block.gamma2 * block.mlp(block.norm2(mid)))
    torch.testing.assert_close(got, expected)
    dropped = (keep1 == 0).flatten() & (keep2 == 0).flatten()
    assert dropped.any() and torch.equal(
        got[dropped], x[dropped]
    )  # both branches dropped: identity


def test_attention_dropout_only_in_training_and_its_weighted_sum_is_na():
    torch.manual_seed(0)
    dropped = NatForImageClassification(tiny(attention_probs_dropout_prob=0.5, drop_path_rate=0.0))
    plain = NatForImageClassification(tiny(drop_path_rate=0.0))
    plain.load_state_dict(dropped.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(dropped.eval()(x).logits, plain.eval()(x).logits)
    assert not torch.allclose(dropped.train()(x).logits, plain.train()(x).logits)
    q, k, v = torch.randn(3, 2, 9, 11, 2, 4, dtype=torch.float64)
    out, weights = na2d(q, k, v, 3, 2, return_weights=True)
    torch.testing.assert_close(_weighted_values(weights, v, 3, 2), out)


def test_gradients_reach_rpb_and_layer_scale():
    model = NatForImageClassification(tiny(layer_scale_init_value=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(
                0.01 * torch.randn_like(p)
            )  # rpb starts at zero; move it off the symmetric point
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
    block = model.nat.levels[1].blocks[1]
    for p in (block.attn.rpb, block.gamma1, block.gamma2):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_backends_agree_on_a_model_and_can_be_switched():
    torch.manual_seed(0)
    model = NatForImageClassification(
        tiny(dilations=[[1], [1, 2]], attention_backend="torch")
    ).eval()
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, NeighborhoodAttention2D):
                block.rpb.normal_()
        x = torch.randn(2, 3, 48, 40)
        ref = model(x, output_attentions=True)
        model.set_attention_backend("reference")
        assert (
            model.config.attention_backend == "reference"
            and model.nat.levels[1].blocks[1].attn.backend == "reference"
        )
        out = model(x, output_attentions=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attentions, ref.attentions, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="backend must be one of .*got backend='cuda'"):
        model.set_attention_backend("cuda")


def test_backbone_feature_maps_and_channels():
    config = tiny(depths=[1, 1, 1], num_heads=[1, 2, 4], out_features=["stem", "stage1", "stage3"])
    backbone = NatBackbone(config).eval()
    out = backbone(torch.randn(2, 3, 64, 48), output_hidden_states=True, output_attentions=True)
    assert [tuple(m.shape) for m in out.feature_maps] == [
        (2, 16, 16, 12),
        (2, 16, 16, 12),
        (2, 64, 4, 3),
    ]
    assert backbone.channels == [16, 16, 64] and backbone.out_indices == [0, 1, 3]
    assert backbone.num_features == [16, 16, 32, 64]
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 16, 12, 16),
        (2, 16, 12, 16),
        (2, 8, 6, 32),
        (2, 4, 3, 64),
    ]  # before downsampling
    assert len(out.attentions) == 3
    assert sorted(backbone.hidden_states_norms) == ["stage1", "stage3", "stem"]
    assert not any(k.startswith(("norm.", "head.")) for k in backbone.state_dict())
