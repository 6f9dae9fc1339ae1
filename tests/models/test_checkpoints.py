"""Key mapping between our/SHI-Labs' names and transformers', on the fixtures' real key sets."""

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import FIXTURES

from nat_lightning.models.checkpoints import (
    detect_layout,
    from_transformers,
    to_canonical,
    to_transformers,
)

NAT = FIXTURES / "hf_nat_tiny_random"
DINAT = FIXTURES / "hf_dinat_tiny_random"


@pytest.mark.parametrize(("fixture", "prefix"), [(NAT, "nat."), (DINAT, "dinat.")])
def test_round_trip_through_our_names_is_exact(fixture, prefix):
    theirs = load_file(str(fixture / "model.safetensors"))
    ours, origin = from_transformers(theirs)
    assert not any(k.startswith(("nat.", "dinat.", "encoder.", "embeddings.")) for k in ours)
    back = to_transformers(ours, prefix)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)
    assert (
        origin["levels.1.blocks.1.attn.qkv.weight"]
        == f"{prefix}encoder.levels.1.layers.1.attention.self.{{query,key,value}}.weight"
    )


def test_names_written_out_by_hand():
    """A few keys of each kind, mapped by hand as SHI-Labs' and transformers' code name them."""
    theirs = load_file(str(NAT / "model.safetensors"))
    ours, _ = from_transformers(theirs)
    attn = "nat.encoder.levels.1.layers.0.attention.self."
    expected = {
        "patch_embed.proj.0.weight": theirs["nat.embeddings.patch_embeddings.projection.0.weight"],
        "patch_embed.norm.bias": theirs["nat.embeddings.norm.bias"],
        "levels.1.blocks.0.norm1.weight": theirs[
            "nat.encoder.levels.1.layers.0.layernorm_before.weight"
        ],
        "levels.1.blocks.0.attn.qkv.weight": torch.cat(
            [theirs[attn + p + ".weight"] for p in ("query", "key", "value")]
        ),
        "levels.1.blocks.0.attn.qkv.bias": torch.cat(
            [theirs[attn + p + ".bias"] for p in ("query", "key", "value")]
        ),
        "levels.1.blocks.0.attn.rpb": theirs[attn + "rpb"],
        "levels.1.blocks.0.attn.proj.weight": theirs[
            "nat.encoder.levels.1.layers.0.attention.output.dense.weight"
        ],
        "levels.1.blocks.0.norm2.bias": theirs[
            "nat.encoder.levels.1.layers.0.layernorm_after.bias"
        ],
        "levels.1.blocks.0.mlp.fc1.weight": theirs[
            "nat.encoder.levels.1.layers.0.intermediate.dense.weight"
        ],
        "levels.1.blocks.0.mlp.fc2.bias": theirs["nat.encoder.levels.1.layers.0.output.dense.bias"],
        "levels.1.blocks.0.gamma1": theirs["nat.encoder.levels.1.layers.0.layer_scale_parameters"][
            0
        ],
        "levels.1.blocks.0.gamma2": theirs["nat.encoder.levels.1.layers.0.layer_scale_parameters"][
            1
        ],
        "levels.2.downsample.reduction.weight": theirs[
            "nat.encoder.levels.2.downsample.reduction.weight"
        ],
        "levels.2.downsample.norm.weight": theirs["nat.encoder.levels.2.downsample.norm.weight"],
        "norm.weight": theirs["nat.layernorm.weight"],
        "head.weight": theirs["classifier.weight"],
    }
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
    assert ours["levels.1.blocks.0.attn.qkv.weight"].shape == (96, 32)


def test_backbone_names_and_no_prefix():
    state = {
        "embeddings.norm.weight": torch.ones(2),
        "hidden_states_norms.stage1.bias": torch.zeros(2),
    }
    ours, _ = from_transformers(state)
    assert set(ours) == {"patch_embed.norm.weight", "hidden_states_norms.stage1.bias"}
    assert to_transformers(ours).keys() == state.keys()


def test_layouts_are_detected():
    assert detect_layout({"nat.embeddings.norm.weight": torch.ones(1)}) == "transformers"
    assert (
        detect_layout({"encoder.levels.0.downsample.norm.weight": torch.ones(1)}) == "transformers"
    )
    assert (
        detect_layout({"patch_embed.norm.weight": torch.ones(1), "head.weight": torch.ones(1)})
        == "original"
    )
    state = {"levels.0.blocks.0.norm1.weight": torch.ones(1)}
    assert to_canonical(state) == (
        state,
        {"levels.0.blocks.0.norm1.weight": "levels.0.blocks.0.norm1.weight"},
    )
    with pytest.raises(ValueError, match="unrecognised checkpoint layout.*\\['fc.weight'\\]"):
        detect_layout({"fc.weight": torch.ones(1)})


def test_malformed_transformers_keys_are_errors():
    partial = {
        f"encoder.levels.0.layers.0.attention.self.{p}.weight": torch.ones(2, 2)
        for p in ("query", "key")
    }
    with pytest.raises(ValueError, match="lacks the \\['value'\\] projection"):
        from_transformers(partial)
    with pytest.raises(
        ValueError, match="layer_scale_parameters must have shape \\(2, channels\\), got \\(3,\\)"
    ):
        from_transformers({"encoder.levels.0.layers.0.layer_scale_parameters": torch.ones(3)})
    with pytest.raises(
        ValueError, match="no transformers name for parameter 'levels.0.blocks.0.extra'"
    ):
        to_transformers({"levels.0.blocks.0.extra": torch.ones(1)})
