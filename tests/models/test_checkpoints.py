import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from nat_lightning import NatBackbone, NatConfig, NatForImageClassification, NatModel
from tests.conftest import FIXTURES

NAT = FIXTURES / "hf_nat_tiny_random"
DINAT = FIXTURES / "hf_dinat_tiny_random"


def logits(model, seed=0):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x).logits


@pytest.mark.parametrize("fixture", [NAT, DINAT])
def test_save_pretrained_writes_transformers_layout_exactly(fixture, tmp_path):
    model = NatForImageClassification.from_pretrained(fixture)
    model.save_pretrained(tmp_path)
    ours, theirs = load_file(str(tmp_path / "model.safetensors")), load_file(str(fixture / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == json.loads((fixture / "config.json").read_text())["architectures"]
    assert not list(tmp_path.glob("*.tmp"))
    torch.testing.assert_close(logits(NatForImageClassification.from_pretrained(tmp_path)), logits(model))


def test_original_layout_loads_with_a_config(tmp_path):
    model = NatForImageClassification.from_pretrained(DINAT)
    original = {k[len("nat."):] if k.startswith("nat.") else k: v for k, v in model.state_dict().items()}
    torch.save({"model": original}, tmp_path / "dinat.pth")
    loaded = NatForImageClassification.from_pretrained(tmp_path / "dinat.pth", config=model.config)
    torch.testing.assert_close(logits(loaded), logits(model))
    with pytest.raises(ValueError, match="pass config=NatConfig"):
        NatForImageClassification.from_pretrained(tmp_path / "dinat.pth")


def test_new_head_when_num_labels_differ(caplog):
    with caplog.at_level(logging.WARNING):
        model = NatForImageClassification.from_pretrained(NAT, num_labels=5)
    assert model.head.weight.shape == (5, 128) and model.config.num_labels == 5
    assert "head is newly initialised" in caplog.text
    reference = NatForImageClassification.from_pretrained(NAT)
    assert torch.equal(model.nat.levels[1].blocks[0].attn.rpb, reference.nat.levels[1].blocks[0].attn.rpb)
    named = NatForImageClassification.from_pretrained(NAT, id2label={0: "a", 1: "b", 2: "c"})
    assert named.config.id2label == {0: "a", 1: "b", 2: "c"} and torch.equal(named.head.weight, reference.head.weight)


def test_model_and_backbone_load_from_a_classifier_checkpoint(caplog):
    reference = NatForImageClassification.from_pretrained(NAT).eval()
    x = torch.randn(1, 3, 64, 64)
    base = NatModel.from_pretrained(NAT).eval()
    torch.testing.assert_close(base(x).pooler_output, reference.nat(x).pooler_output)
    with caplog.at_level(logging.WARNING):
        backbone = NatBackbone.from_pretrained(NAT)
    assert "out_norms is newly initialised" in caplog.text
    assert backbone(x).feature_maps[0].shape == (1, 128, 2, 2)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    tensors = load_file(str(NAT / "model.safetensors"))
    del tensors["nat.encoder.levels.0.layers.0.attention.self.rpb"]
    tensors["nat.encoder.levels.0.layers.0.extra"] = torch.zeros(1)
    (tmp_path / "config.json").write_text((NAT / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing keys \\[nat.levels.0.blocks.0.attn.rpb\\].*unexpected keys "
                                         "\\[nat.encoder.levels.0.layers.0.extra\\]"):
        NatForImageClassification.from_pretrained(tmp_path)


def test_a_checkpoint_that_does_not_fit_the_config(tmp_path):
    config = json.loads((NAT / "config.json").read_text())
    config["mlp_ratio"] = 3.0
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((NAT / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="shape mismatches .*nat.levels.0.blocks.0.mlp.fc1.weight: "
                                         "checkpoint \\(32, 16\\) vs model \\(48, 16\\)"):
        NatForImageClassification.from_pretrained(tmp_path)


def test_pickled_code_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        NatForImageClassification.from_pretrained(tmp_path / "evil.pth", config=NatConfig())


def test_offline_hub_id_not_in_cache_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(OSError, match="shi-labs/nat-mini-in1k-224.*HF_HUB_OFFLINE is set"):
        NatForImageClassification.from_pretrained("shi-labs/nat-mini-in1k-224")


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NatForImageClassification.from_pretrained(str(tmp_path / "nowhere" / "model"))
