"""NatConfig against transformers' config.json files and the NAT/DiNAT papers' numbers."""

import json
import stat

import pytest
import torch
from tests.conftest import FIXTURES

from nat_lightning import NatConfig, NatForImageClassification, get_variant, list_variants
from nat_lightning.models import VARIANTS

FIXTURE_NAMES = ["hf_nat_tiny_random", "hf_dinat_tiny_random"]


def test_defaults_are_transformers_natconfig():
    c = NatConfig()
    transformers_defaults = {
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": 64,
        "depths": [3, 4, 6, 5],
        "num_heads": [2, 4, 8, 16],
        "kernel_size": 7,
        "mlp_ratio": 3.0,
        "qkv_bias": True,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.1,
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "layer_scale_init_value": 0.0,
        "out_features": ["stage4"],
        "out_indices": [4],
        "num_labels": 2,
        "id2label": {0: "LABEL_0", 1: "LABEL_1"},
    }
    assert {k: getattr(c, k) for k in transformers_defaults} == transformers_defaults
    assert (c.model_type, c.hidden_size, c.num_layers) == ("nat", 512, 4)
    assert c.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_config_json_round_trip_is_exact(name, tmp_path):
    original = json.loads((FIXTURES / name / "config.json").read_text())
    config = NatConfig.from_pretrained_dir(FIXTURES / name)
    for generic in (
        "torch_dtype",
        "transformers_version",
    ):  # written by transformers for every model
        original.pop(generic)
    assert config.to_dict(original["architectures"]) == original
    written = config.save(tmp_path)
    assert written == tmp_path / "config.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644 and not list(tmp_path.glob(".*tmp"))
    assert json.loads(written.read_text())["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    assert NatConfig.from_json(written) == config


def test_to_dict_feeds_from_dict():
    config = get_variant("dinat_mini", num_labels=3, attention_backend="torch")
    data = config.to_dict()
    assert data["model_type"] == "dinat" and data["architectures"] == [
        "DinatForImageClassification"
    ]
    assert "attention_backend" not in data and "num_labels" not in data
    assert NatConfig.from_dict(data) == config.replace(attention_backend="auto")
    assert "dilations" not in NatConfig().to_dict()


def test_dinat_config_json_without_dilations_gets_transformers_default(tmp_path):
    data = json.loads((FIXTURES / "hf_dinat_tiny_random" / "config.json").read_text())
    data.update(depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], num_layers=4)
    del data["dilations"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = NatConfig.from_json(tmp_path / "config.json")
    assert config.dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"model_type": "swin"}, "model_type must be 'nat' or 'dinat', got model_type='swin'"),
        (
            {"model_type": "nat", "depths": [1], "num_heads": [1], "dilations": [[2]]},
            "model_type='nat' has no dil",
        ),
        ({"model_type": "nat", "hidden_size": 99}, "hidden_size=99 disagrees .* hidden_size=512"),
        ({"embed_dims": 32}, "unknown NatConfig fields \\['embed_dims'\\]"),
    ],
)
def test_inconsistent_dicts_are_rejected(data, match):
    with pytest.raises(ValueError, match=match):
        NatConfig.from_dict(data)


def test_labels():
    assert NatConfig(id2label={"0": "a", "1": "b", "2": "c"}).num_labels == 3
    assert NatConfig(num_labels=4).id2label == {
        0: "LABEL_0",
        1: "LABEL_1",
        2: "LABEL_2",
        3: "LABEL_3",
    }
    assert NatConfig(id2label={0: "a"}).replace(num_labels=2).id2label == {
        0: "LABEL_0",
        1: "LABEL_1",
    }
    with pytest.raises(
        ValueError, match="num_labels=2 disagrees with id2label, which has 1 entries"
    ):
        NatConfig(num_labels=2, id2label={0: "a"})
    with pytest.raises(ValueError, match="id2label keys must be 0..1"):
        NatConfig(id2label={0: "a", 5: "b"})


def test_out_features_and_out_indices_align_like_transformers():
    assert NatConfig(out_features=["stage1", "stage3"]).out_indices == [1, 3]
    assert NatConfig(out_indices=[0, 2]).out_features == ["stem", "stage2"]
    assert NatConfig(out_indices=[-1]).out_features == ["stage4"]
    c = NatConfig(out_features=["stem"]).replace(out_features=["stage2"])
    assert (c.out_features, c.out_indices) == (["stage2"], [2])
    with pytest.raises(ValueError, match="must name the same stages"):
        NatConfig(out_features=["stage1"], out_indices=[2])
    with pytest.raises(ValueError, match="out_features must be among"):
        NatConfig(out_features=["stage9"])
    with pytest.raises(ValueError, match="out_indices must index"):
        NatConfig(out_indices=[5])
    with pytest.raises(ValueError, match="must not repeat a stage"):
        NatConfig(out_indices=[1, 1])
    with pytest.raises(ValueError, match="out_features must follow the stage order"):
        NatConfig(out_features=["stage2", "stage1"])
    with pytest.raises(
        ValueError, match="out_indices must follow the stage order, got out_indices=\\[-1, 1\\]"
    ):
        NatConfig(out_indices=[-1, 1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 8}, "patch_size must be 4.*patch_size=8"),
        ({"kernel_size": 6}, "kernel_size must be an odd integer >= 3, got kernel_size=6"),
        ({"kernel_size": 1}, "kernel_size must be an odd integer >= 3, got kernel_size=1"),
        ({"num_heads": [2, 4]}, "num_heads must have one entry per stage \\(4 stages"),
        (
            {"num_heads": [3, 4, 8, 16]},
            "64 channels, which must be divisible by num_heads\\[0\\]=3",
        ),
        ({"depths": [3, 0, 6, 5]}, "depths\\[1\\] must be an integer >= 1, got depths\\[1\\]=0"),
        ({"depths": []}, "depths must list at least one stage"),
        ({"dilations": [[1], [1], [1], [1]]}, "dilations must have one entry per block"),
        (
            {"depths": [1], "num_heads": [2], "dilations": [[0]]},
            "dilations\\[0\\]\\[0\\] must be an integer >= 1",
        ),
        ({"mlp_ratio": 0}, "mlp_ratio must be > 0"),
        ({"drop_path_rate": 1.0}, "drop_path_rate must be in \\[0, 1\\), got drop_path_rate=1.0"),
        ({"hidden_act": "tanh"}, "hidden_act must be one of"),
        (
            {"attention_backend": "cuda"},
            "attention_backend must be one of .*got attention_backend='cuda'",
        ),
        ({"num_labels": -1}, "num_labels must be an integer >= 0, got num_labels=-1"),
        ({"embed_dim": 1}, "embed_dim must be an integer >= 2"),
    ],
)
def test_bad_config_names_field_value_and_expectation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NatConfig(**kwargs)


def test_fields_are_keyword_only():
    with pytest.raises(TypeError):
        NatConfig(4)


# -- variants --------------------------------------------------------------------------------


def test_variant_lookup_and_overrides():
    assert list_variants() == sorted(VARIANTS)
    assert {
        "nat_mini",
        "nat_tiny",
        "nat_small",
        "nat_base",
        "dinat_mini",
        "dinat_tiny",
        "dinat_small",
        "dinat_base",
        "dinat_large",
    } <= set(list_variants())
    c = get_variant("nat_tiny", num_labels=10, drop_path_rate=0.0)
    assert (c.num_labels, c.drop_path_rate, c.depths) == (10, 0.0, [3, 4, 18, 5])
    assert NatConfig.from_variant("nat_tiny") == get_variant("nat_tiny")
    with pytest.raises(
        ValueError, match="unknown variant 'nat_huge'; known variants: \\[.*'nat_mini'"
    ):
        get_variant("nat_huge")


def test_variant_table_is_read_only():
    with pytest.raises(TypeError):
        VARIANTS["nat_new"] = {}
    with pytest.raises(TypeError):
        VARIANTS["nat_mini"]["embed_dim"] = 1
    get_variant("dinat_mini").dilations[0][1] = 99  # a config is a copy
    assert VARIANTS["dinat_mini"]["dilations"][0] == (1, 8, 1)


# the papers' tables (NAT: arXiv 2204.07143 Table 1; DiNAT: arXiv 2209.15001, SHI-Labs' dinat.py)
PAPER = {
    # name: (embed_dim, depths, num_heads, mlp_ratio, drop_path_rate, layer_scale, params in M)
    "nat_mini": (64, [3, 4, 6, 5], [2, 4, 8, 16], 3.0, 0.2, 0.0, 20),
    "nat_tiny": (64, [3, 4, 18, 5], [2, 4, 8, 16], 3.0, 0.2, 0.0, 28),
    "nat_small": (96, [3, 4, 18, 5], [3, 6, 12, 24], 2.0, 0.3, 1e-5, 51),
    "nat_base": (128, [3, 4, 18, 5], [4, 8, 16, 32], 2.0, 0.5, 1e-5, 90),
    "dinat_mini": (64, [3, 4, 6, 5], [2, 4, 8, 16], 3.0, 0.2, 0.0, 20),
    "dinat_tiny": (64, [3, 4, 18, 5], [2, 4, 8, 16], 3.0, 0.2, 0.0, 28),
    "dinat_small": (96, [3, 4, 18, 5], [3, 6, 12, 24], 2.0, 0.3, 0.0, 51),
    "dinat_base": (128, [3, 4, 18, 5], [4, 8, 16, 32], 2.0, 0.5, 1e-5, 90),
    "dinat_large": (192, [3, 4, 18, 5], [6, 12, 24, 48], 2.0, 0.35, 0.0, 200),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_variants_have_the_papers_hyperparameters(name):
    c = get_variant(name)
    embed, depths, heads, mlp, dpr, scale, _ = PAPER[name]
    got = (
        c.embed_dim,
        c.depths,
        c.num_heads,
        c.mlp_ratio,
        c.drop_path_rate,
        c.layer_scale_init_value,
    )
    assert got == (embed, depths, heads, mlp, dpr, scale) and c.kernel_size == 7
    assert c.model_type == ("dinat" if name.startswith("dinat") else "nat")


def test_dinat_dilations():
    assert get_variant("dinat_mini").dilations == [
        [1, 8, 1],
        [1, 4, 1, 4],
        [1, 2, 1, 2, 1, 2],
        [1, 1, 1, 1, 1],
    ]
    for name in ("dinat_tiny", "dinat_small", "dinat_base", "dinat_large"):
        assert get_variant(name).dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]


def analytic_parameter_count(
    embed, depths, heads, mlp, layer_scale, kernel=7, classes=1000, channels=3
):
    """NAT's parameters from its structure, written out independently of the model code."""
    half = embed // 2
    total = channels * half * 9 + half + half * embed * 9 + embed + 2 * embed  # two convs, norm
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c, hidden = embed * 2**i, int(embed * 2**i * mlp)
        block = (3 * c * c + 3 * c) + (c * c + c) + h * (2 * kernel - 1) ** 2  # qkv, proj, rpb
        block += (c * hidden + hidden) + (hidden * c + c) + 4 * c  # mlp, two norms
        block += 2 * c if layer_scale else 0
        total += depth * block
        if i < len(depths) - 1:
            total += c * 2 * c * 9 + 4 * c  # downsampler conv (no bias) and norm
    c_last = embed * 2 ** (len(depths) - 1)
    return total + 2 * c_last + c_last * classes + classes  # final norm, head


@pytest.mark.parametrize("name", sorted(PAPER))
def test_variants_parameter_counts_match_structure_and_papers(name):
    embed, depths, heads, mlp, _, scale, paper_millions = PAPER[name]
    with torch.device("meta"):
        model = NatForImageClassification(get_variant(name, num_labels=1000))
    count = sum(p.numel() for p in model.parameters())
    assert count == analytic_parameter_count(embed, depths, heads, mlp, scale)
    assert count / 1e6 == pytest.approx(paper_millions, rel=0.05)
