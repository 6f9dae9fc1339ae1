"""The networks against transformers 4.40.2 + NATTEN 0.17.5 reference outputs (../shared/fixtures)."""

import pytest
import torch
from safetensors.torch import load_file

from nat_lightning import NatBackbone, NatConfig, NatForImageClassification, NatModel
from tests.conftest import FIXTURES

FIXTURE_NAMES = ["hf_nat_tiny_random", "hf_dinat_tiny_random"]


def tiny(**overrides):
    base = dict(embed_dim=16, depths=[1, 2], num_heads=[1, 2], kernel_size=3, mlp_ratio=2.0, num_labels=4)
    return NatConfig(**{**base, **overrides})


def assert_close_rel(got, expected, rel=1e-4):
    scale = expected.abs().max().clamp(min=1e-6)
    assert (got - expected).abs().max() / scale < rel, f"max rel error {((got - expected).abs().max() / scale):.2e}"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fixture_parity(name, backend):
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model = NatForImageClassification.from_pretrained(FIXTURES / name, attention_backend=backend).eval()
    with torch.no_grad():
        out = model(expected["pixel_values"], output_hidden_states=True, output_attentions=True)
    assert_close_rel(out.logits, expected["logits"])
    for i, state in enumerate(out.reshaped_hidden_states):
        assert_close_rel(state, expected[f"reshaped_hidden_states.{i}"])
    for i, weights in enumerate(out.attentions):
        assert weights.shape == expected[f"attentions.{i}"].shape  # over the padded map
        assert_close_rel(weights, expected[f"attentions.{i}"])


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_pytorch_model_bin_loads_the_same_weights(name, tmp_path):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_bytes((FIXTURES / name / "config.json").read_bytes())
    (folder / "pytorch_model.bin").write_bytes((FIXTURES / name / "pytorch_model.bin").read_bytes())
    a = NatForImageClassification.from_pretrained(folder).state_dict()
    b = NatForImageClassification.from_pretrained(FIXTURES / name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_and_shapes():
    model = NatForImageClassification(tiny()).eval()
    out = model(torch.randn(2, 3, 32, 40), labels=torch.tensor([0, 3]), output_hidden_states=True,
                output_attentions=True)
    assert out.logits.shape == (2, 4)
    assert out.loss is not None and out.loss.ndim == 0
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 8, 10, 16), (2, 4, 5, 32), (2, 4, 5, 32)]
    assert [tuple(h.shape) for h in out.reshaped_hidden_states] == [(2, 16, 8, 10), (2, 32, 4, 5), (2, 32, 4, 5)]
    assert [tuple(a.shape) for a in out.attentions] == [(2, 1, 8, 10, 9), (2, 2, 4, 5, 9)]
    base = NatModel(tiny())(torch.randn(1, 3, 32, 32))
    assert base.last_hidden_state.shape == (1, 4, 4, 32) and base.pooler_output.shape == (1, 32)


@pytest.mark.parametrize("size", [(17, 23), (8, 8), (63, 45)])
def test_any_input_size_including_maps_smaller_than_the_window(size):
    model = NatForImageClassification(tiny(kernel_size=7, dilations=[[2], [1, 3]])).eval()
    assert model(torch.randn(1, 3, *size)).logits.shape == (1, 4)


def test_soft_targets_and_ignore_index_in_the_loss():
    model = NatForImageClassification(tiny()).eval()
    x = torch.randn(3, 3, 32, 32)
    logits = model(x).logits
    soft = torch.nn.functional.one_hot(torch.tensor([1, 2, 0]), 4).float()
    torch.testing.assert_close(model(x, labels=soft).loss, torch.nn.functional.cross_entropy(logits, soft.argmax(-1)))
    only_first = model(x, labels=torch.tensor([1, -100, -100])).loss
    torch.testing.assert_close(only_first, torch.nn.functional.cross_entropy(logits[:1], torch.tensor([1])))


def test_backbone_feature_maps():
    config = tiny(depths=[1, 1, 1], num_heads=[1, 2, 4], out_features=["stem", "stage1", "stage3"])
    backbone = NatBackbone(config).eval()
    maps = backbone(torch.randn(2, 3, 64, 48)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 12), (2, 16, 16, 12), (2, 64, 4, 3)]
    assert backbone.out_channels == [16, 16, 64]
    assert config.out_indices == [0, 1, 3]


def test_drop_path_only_in_training():
    model = NatForImageClassification(tiny(drop_path_rate=0.9))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)
    model.train()
    torch.manual_seed(0)
    a = model(x).logits
    torch.manual_seed(1)
    assert not torch.equal(a, model(x).logits)


def test_gradients_reach_rpb_and_layer_scale():
    model = NatForImageClassification(tiny(layer_scale_init_value=0.5))
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
    block = model.nat.levels[1].blocks[1]
    for p in (block.attn.rpb, block.gamma1, block.gamma2):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_backends_agree_on_a_model():
    torch.manual_seed(0)
    model = NatForImageClassification(tiny(dilations=[[1], [1, 2]])).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        ref = model(x).logits
        for block in model.modules():
            if hasattr(block, "backend"):
                block.backend = "reference"
        torch.testing.assert_close(model(x).logits, ref, atol=1e-5, rtol=1e-5)


def test_attention_dropout_path_runs_and_is_exact_without_dropout():
    torch.manual_seed(0)
    model = NatForImageClassification(tiny(attention_probs_dropout_prob=0.5))
    x = torch.randn(1, 3, 32, 32)
    model.train()
    assert torch.isfinite(model(x).logits).all()
    model.eval()
    assert torch.isfinite(model(x).logits).all()
