"""from_pretrained/save_pretrained: transformers folders, original state dicts, errors."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import FIXTURES

from nat_lightning import NatBackbone, NatConfig, NatForImageClassification, NatModel, get_variant

NAT = FIXTURES / "hf_nat_tiny_random"
DINAT = FIXTURES / "hf_dinat_tiny_random"
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def logits(model: NatForImageClassification) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X).logits


def copy_fixture(fixture, folder, weights="model.safetensors"):
    folder.mkdir()
    shutil.copy(fixture / "config.json", folder / "config.json")
    shutil.copy(fixture / weights, folder / weights)
    return folder


def original_from_transformers(theirs: dict) -> dict:
    """SHI-Labs' names for a transformers classifier state dict, written out by hand."""
    renames = [
        ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
        ("embeddings.norm", "patch_embed.norm"),
        ("encoder.levels", "levels"),
        (".layers.", ".blocks."),
        ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"),
        ("attention.output.dense", "attn.proj"),
        ("attention.self.rpb", "attn.rpb"),
        ("intermediate.dense", "mlp.fc1"),
        ("output.dense", "mlp.fc2"),
        ("classifier", "head"),
    ]
    out, qkv = {}, {}
    for key, value in theirs.items():
        key = key.removeprefix("nat.").removeprefix("dinat.")
        for old, new in renames:
            key = key.replace(old, new)
        key = "norm." + key.removeprefix("layernorm.") if key.startswith("layernorm.") else key
        if ".attention.self." in key:  # query/key/value -> fused qkv, in that order
            block, part, kind = key.rsplit(".", 2)
            qkv.setdefault(f"{block.replace('.attention.self', '.attn.qkv')}.{kind}", {})[part] = (
                value
            )
        elif key.endswith("layer_scale_parameters"):
            (
                out[key.replace("layer_scale_parameters", "gamma1")],
                out[key.replace("layer_scale_parameters", "gamma2")],
            ) = value
        else:
            out[key] = value
    out.update({k: torch.cat([p["query"], p["key"], p["value"]]) for k, p in qkv.items()})
    return out


@pytest.mark.parametrize("fixture", [NAT, DINAT])
def test_pytorch_model_bin_loads_the_same_weights(fixture, tmp_path):
    from_bin = NatForImageClassification.from_pretrained(
        copy_fixture(fixture, tmp_path / "bin", "pytorch_model.bin")
    )
    from_safetensors = NatForImageClassification.from_pretrained(fixture)
    a, b = from_bin.state_dict(), from_safetensors.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fixture", [NAT, DINAT])
def test_save_pretrained_writes_transformers_layout_exactly(fixture, tmp_path):
    model = NatForImageClassification.from_pretrained(fixture)
    assert model.save_pretrained(tmp_path) == tmp_path
    ours, theirs = (
        load_file(str(tmp_path / "model.safetensors")),
        load_file(str(fixture / "model.safetensors")),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    written, original = (json.loads((d / "config.json").read_text()) for d in (tmp_path, fixture))
    assert written == {
        k: v for k, v in original.items() if k not in ("torch_dtype", "transformers_version")
    }
    assert not [p for p in tmp_path.iterdir() if p.name not in ("config.json", "model.safetensors")]
    assert torch.equal(logits(NatForImageClassification.from_pretrained(tmp_path)), logits(model))


def test_save_pretrained_for_the_base_model_and_the_backbone(tmp_path):
    theirs = load_file(str(NAT / "model.safetensors"))
    encoder = {k.removeprefix("nat.") for k in theirs if k.startswith("nat.")}

    base = NatModel.from_pretrained(NAT)
    base.save_pretrained(tmp_path / "model")
    assert load_file(str(tmp_path / "model" / "model.safetensors")).keys() == encoder
    assert json.loads((tmp_path / "model" / "config.json").read_text())["architectures"] == [
        "NatModel"
    ]
    torch.testing.assert_close(
        NatModel.from_pretrained(tmp_path / "model").eval()(X).pooler_output,
        base.eval()(X).pooler_output,
        rtol=0,
        atol=0,
    )

    backbone = NatBackbone.from_pretrained(DINAT, out_features=["stage2", "stage4"])
    backbone.save_pretrained(tmp_path / "backbone")
    keys = load_file(str(tmp_path / "backbone" / "model.safetensors")).keys()
    assert {"hidden_states_norms.stage2.weight", "hidden_states_norms.stage4.bias"} <= keys
    assert not any(k.startswith(("dinat.", "layernorm.", "classifier.")) for k in keys)
    config = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert (config["architectures"], config["out_features"], config["out_indices"]) == (
        ["DinatBackbone"],
        ["stage2", "stage4"],
        [2, 4],
    )
    reloaded = NatBackbone.from_pretrained(tmp_path / "backbone").eval()
    for a, b in zip(reloaded(X).feature_maps, backbone.eval()(X).feature_maps):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fixture", [NAT, DINAT])
@pytest.mark.parametrize("container", ["model", "state_dict+module", "safetensors"])
def test_original_layout_state_dict_loads_with_a_config(fixture, container, tmp_path):
    original = original_from_transformers(load_file(str(fixture / "model.safetensors")))
    if container == "model":
        torch.save({"model": original, "epoch": 3}, path := tmp_path / "nat.pth")
    elif container == "state_dict+module":
        torch.save(
            {"state_dict": {f"module.{k}": v for k, v in original.items()}},
            path := tmp_path / "nat.pt",
        )
    else:
        save_file(original, str(path := tmp_path / "nat.safetensors"))
    config = NatConfig.from_pretrained_dir(fixture)
    loaded = NatForImageClassification.from_pretrained(
        path, config=config.replace(id2label=None, num_labels=2)
    )
    assert loaded.config.num_labels == 3  # the head's size comes from the checkpoint
    assert torch.equal(logits(loaded), logits(NatForImageClassification.from_pretrained(fixture)))


def test_original_layout_with_a_variant_name(tmp_path):
    model = NatForImageClassification(get_variant("nat_pico", num_labels=10))
    torch.save(
        {k.removeprefix("nat."): v for k, v in model.state_dict().items()}, tmp_path / "pico.pth"
    )
    loaded = NatForImageClassification.from_pretrained(tmp_path / "pico.pth", config="nat_pico")
    assert loaded.config.num_labels == 10
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.eval()(x).logits, model.eval()(x).logits)
    with pytest.raises(ValueError, match="bare state dict without a config.json: pass config="):
        NatForImageClassification.from_pretrained(tmp_path / "pico.pth")


def test_a_new_head_when_num_labels_differ(caplog):
    reference = NatForImageClassification.from_pretrained(NAT)
    with caplog.at_level(logging.WARNING, logger="nat_lightning.models.pretrained"):
        model = NatForImageClassification.from_pretrained(NAT, num_labels=5)
    assert model.head.weight.shape == (5, 128) and model.config.num_labels == 5
    assert "classification head is newly initialised for num_labels=5" in caplog.text
    assert "its head has 3 classes" in caplog.text
    assert torch.equal(model.head.bias, torch.zeros(5))
    theirs = reference.state_dict()
    assert all(
        torch.equal(v, theirs[k])
        for k, v in model.state_dict().items()
        if not k.startswith("head.")
    )

    caplog.clear()
    named = NatForImageClassification.from_pretrained(NAT, id2label={0: "a", 1: "b", 2: "c"})
    assert named.config.id2label == {0: "a", 1: "b", 2: "c"} and torch.equal(
        named.head.weight, reference.head.weight
    )
    assert "newly initialised" not in caplog.text
    with pytest.raises(
        ValueError, match="num_labels=4 disagrees with id2label, which has 3 entries"
    ):
        NatForImageClassification.from_pretrained(
            NAT, num_labels=4, id2label={0: "a", 1: "b", 2: "c"}
        )


def test_model_and_backbone_load_from_a_classifier_checkpoint(caplog):
    reference = NatForImageClassification.from_pretrained(NAT).eval()
    base = NatModel.from_pretrained(NAT).eval()
    assert torch.equal(base(X).pooler_output, reference.nat(X).pooler_output)
    with caplog.at_level(logging.WARNING, logger="nat_lightning.models.pretrained"):
        backbone = NatBackbone.from_pretrained(NAT, out_features=["stage1", "stage4"])
    assert "backbone norms of ['stage1', 'stage4'] are newly initialised" in caplog.text
    assert [tuple(m.shape) for m in backbone(X).feature_maps] == [(2, 16, 16, 16), (2, 128, 2, 2)]
    assert torch.equal(
        backbone.levels[2].blocks[1].attn.rpb, reference.nat.levels[2].blocks[1].attn.rpb
    )


def test_a_backbone_checkpoint_feeds_other_out_features(tmp_path, caplog):
    NatBackbone.from_pretrained(NAT, out_features=["stage1", "stage2"]).save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="nat_lightning.models.pretrained"):
        backbone = NatBackbone.from_pretrained(tmp_path, out_features=["stage2", "stage3"])
    assert "norms of ['stage3'] are newly initialised" in caplog.text
    assert (
        "does not use [hidden_states_norms.stage1.bias, hidden_states_norms.stage1.weight]"
        in caplog.text
    )
    assert backbone.channels == [32, 64]


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    tensors = load_file(str(NAT / "model.safetensors"))
    del tensors["nat.encoder.levels.0.layers.0.attention.self.rpb"]
    tensors["nat.encoder.levels.0.layers.0.extra"] = torch.zeros(1)
    folder = copy_fixture(NAT, tmp_path / "broken")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(
        ValueError,
        match="missing keys \\[nat.levels.0.blocks.0.attn.rpb\\]; unexpected keys "
        "\\[nat.encoder.levels.0.layers.0.extra\\]",
    ):
        NatForImageClassification.from_pretrained(folder)


def test_a_checkpoint_that_does_not_fit_the_config_names_key_and_shapes(tmp_path):
    folder = copy_fixture(NAT, tmp_path / "wide")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mlp_ratio": 3.0}))
    with pytest.raises(
        ValueError,
        match="shape mismatches .*nat.encoder.levels.0.layers.0.intermediate.dense.weight: "
        "checkpoint \\(32, 16\\) vs model \\(48, 16\\)",
    ):
        NatForImageClassification.from_pretrained(folder)
    with pytest.raises(
        ValueError, match="classifier.weight: checkpoint \\(3, 128\\) vs model \\(3, 256\\)"
    ):
        # a config argument wins over config.json
        NatForImageClassification.from_pretrained(
            NAT, config=NatConfig.from_pretrained_dir(NAT).replace(embed_dim=32)
        )


def test_overrides_change_the_config_and_typos_are_errors():
    model = NatForImageClassification.from_pretrained(
        NAT, drop_path_rate=0.0, attention_backend="reference"
    )
    assert (
        model.config.drop_path_rate == 0.0
        and model.nat.levels[0].blocks[0].attn.backend == "reference"
    )
    with pytest.raises(ValueError, match="unknown NatConfig fields \\['drop_path'\\]"):
        NatForImageClassification.from_pretrained(NAT, drop_path=0.0)


def test_files_and_folders_that_are_not_checkpoints(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="does not exist, and it is not a Hugging Face Hub repo id"
    ):
        NatForImageClassification.from_pretrained(tmp_path / "nowhere" / "model")
    with pytest.raises(FileNotFoundError, match="'nat_mini.pth' does not exist"):
        NatForImageClassification.from_pretrained("nat_mini.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        NatForImageClassification.from_pretrained(tmp_path / "empty")
    shutil.copy(NAT / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(
        FileNotFoundError, match="has none of \\['model.safetensors', 'pytorch_model.bin'\\]"
    ):
        NatForImageClassification.from_pretrained(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="got suffix '.txt'"):
        NatForImageClassification.from_pretrained(tmp_path / "notes.txt", config="nat_mini")
