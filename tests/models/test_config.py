import json

import pytest
import torch

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.models import VARIANTS
from tests.conftest import FIXTURES


def test_defaults_are_transformers_nat_mini():
    c = NatConfig()
    assert (c.embed_dim, c.depths, c.num_heads, c.kernel_size, c.mlp_ratio) == (64, [3, 4, 6, 5], [2, 4, 8, 16], 7, 3.0)
    assert (c.drop_path_rate, c.layer_norm_eps, c.layer_scale_init_value, c.num_labels) == (0.1, 1e-5, 0.0, 2)
    assert c.out_features == ["stage4"] and c.out_indices == [4] and c.model_type == "nat"


@pytest.mark.parametrize("name", ["hf_nat_tiny_random", "hf_dinat_tiny_random"])
def test_config_json_round_trip(name, tmp_path):
    original = json.loads((FIXTURES / name / "config.json").read_text())
    config = NatConfig.from_json(FIXTURES / name / "config.json")
    written = config.to_dict()
    for key in ("model_type", "embed_dim", "depths", "num_heads", "kernel_size", "mlp_ratio", "id2label",
                "label2id", "hidden_size", "num_layers", "stage_names", "out_features", "out_indices",
                "layer_scale_init_value", "drop_path_rate"):
        assert written[key] == original[key], key
    assert written.get("dilations") == original.get("dilations")


# parameter counts at 1000 classes, from the NAT and DiNAT papers (millions)
PAPER_PARAMS = {"nat_mini": 20, "nat_tiny": 28, "nat_small": 51, "nat_base": 90,
                "dinat_mini": 20, "dinat_tiny": 28, "dinat_small": 51, "dinat_base": 90, "dinat_large": 200}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_variants_match_the_papers_parameter_counts(name):
    with torch.device("meta"):
        model = NatForImageClassification(NatConfig.from_variant(name, num_labels=1000))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PAPER_PARAMS[name], rel=0.05)


def test_dinat_mini_dilations():
    assert VARIANTS["dinat_mini"]["dilations"] == [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]


def test_variant_overrides_and_read_only_table():
    c = NatConfig.from_variant("nat_tiny", num_labels=10, drop_path_rate=0.0)
    assert c.num_labels == 10 and c.drop_path_rate == 0.0 and c.depths == [3, 4, 18, 5]
    with pytest.raises(TypeError):
        VARIANTS["nat_new"] = {}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(patch_size=8), "patch_size must be 4.*patch_size=8"),
        (dict(kernel_size=6), "kernel_size must be an odd integer >= 3, got kernel_size=6"),
        (dict(kernel_size=1), "kernel_size=1"),
        (dict(num_heads=[2, 4]), "num_heads must have one entry per stage"),
        (dict(num_heads=[3, 4, 8, 16]), "not divisible by num_heads\\[0\\]=3"),
        (dict(dilations=[[1], [1], [1], [1]]), "dilations must have one entry per block"),
        (dict(out_features=["stage9"]), "out_features must be among"),
        (dict(attention_backend="cuda"), "attention_backend must be one of"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NatConfig(**kwargs)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown variant 'nat_huge'.*nat_mini"):
        NatConfig.from_variant("nat_huge")


def test_unknown_field_is_an_error():
    with pytest.raises(ValueError, match="unknown NatConfig fields \\['embed_dims'\\]"):
        NatConfig.from_dict({"embed_dims": 32})
