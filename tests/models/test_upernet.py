"""UPerNet on NAT/DiNAT against transformers 4.40.2 (fixtures and, where built, the library itself)
and transformers 5's UperNetForSemanticSegmentation, checkpoint round trips, backbones from
classifiers, errors, gradients."""

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import FIXTURES

from nat_lightning.models import (
    NatConfig,
    NatForImageClassification,
    NatForSemanticSegmentation,
    UperNetConfig,
)
from nat_lightning.models.upernet import segmentation_loss

SEGMENTATION = ["hf_upernet_nat_tiny_random", "hf_upernet_dinat_tiny_random"]
NAT = FIXTURES / "hf_upernet_nat_tiny_random"
CLASSIFIER = FIXTURES / "hf_nat_tiny_random"
REL = 1e-4  # max |error| / max |expected|, per tensor
ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]
# transformers 4.40.2 on NATTEN 0.17.5, as ../shared/reference/setup_transformers440.sh builds it
TF440 = Path(os.environ.get("TRANSFORMERS440_DIR", Path(__file__).parents[3] / "transformers440"))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


def tiny_config(dinat: bool = False, **fields) -> UperNetConfig:
    """Four stages at 16-128 channels, kernel 3: 64 px gives 16, 8, 4 and 2 token maps."""
    fields.setdefault(
        "backbone",
        NatConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 2, 4],
            kernel_size=3,
            mlp_ratio=2.0,
            dilations=[[1], [2], [1], [1]] if dinat else None,
            out_features=ALL_STAGES,
            attention_backend="torch",
        ),
    )
    base = {"num_labels": 4, "hidden_size": 16, "auxiliary_channels": 8}
    return UperNetConfig(**{**base, **fields})


def randomized(model: NatForSemanticSegmentation, seed: int = 0) -> NatForSemanticSegmentation:
    """Every weight and BatchNorm statistic random (variances positive), so nothing is trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.3
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)
    return model.eval()


def segment(model, pixel_values, labels=None):
    with torch.no_grad():
        return model.eval()(pixel_values, labels)


# -- parity with transformers' outputs (the fixtures) ---------------------------------------------


@pytest.mark.parametrize("name", SEGMENTATION)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_parity_with_transformers(name, dtype):
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model = NatForSemanticSegmentation.from_pretrained(FIXTURES / name, attention_backend="torch")
    model = model.to(dtype).eval()
    pixel_values = expected["pixel_values"].to(dtype)
    with torch.no_grad():
        out = model(pixel_values, expected["labels"])
        maps = model.backbone(pixel_values).feature_maps
    assert (expected["labels"] == 255).any()  # the loss must ignore those
    assert out.logits.dtype == dtype and out.logits.shape == expected["logits"].shape
    assert relative_error(out.logits.float(), expected["logits"]) < REL
    assert relative_error(out.loss.float().reshape(1), expected["loss"]) < REL
    for i, feature_map in enumerate(maps):
        assert relative_error(feature_map.float(), expected[f"feature_maps.{i}"]) < REL, i


class _Slot(torch.nn.Module):
    """transformers' ``UperNetForSemanticSegmentation.backbone``: calls our NatBackbone."""

    def __init__(self, backbone):
        super().__init__()
        self._backbone, self.channels = (backbone,), backbone.channels

    def forward_with_filtered_kwargs(self, pixel_values, **_):
        return self._backbone[0](pixel_values)


@pytest.mark.parametrize("name", SEGMENTATION)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transformers_5_upernet_on_our_backbone_computes_our_logits_and_loss(name, dtype):
    """Our heads are transformers' classes; the forward around them is ours: the same numbers as
    transformers 5's own UperNetForSemanticSegmentation with our backbone slotted in."""
    from transformers import UperNetConfig as TransformersConfig
    from transformers import UperNetForSemanticSegmentation
    from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

    from nat_lightning.models.universal_config import standin_backbone

    ours = NatForSemanticSegmentation.from_pretrained(FIXTURES / name, attention_backend="torch")
    assert type(ours.decode_head) is UperNetHead and type(ours.auxiliary_head) is UperNetFCNHead
    config = ours.config.to_dict()
    config["backbone_config"] = standin_backbone(ours.config.backbone_channels)
    theirs = UperNetForSemanticSegmentation(TransformersConfig.from_dict(config))
    heads = {k: v for k, v in ours.state_dict().items() if not k.startswith("backbone.")}
    assert heads.keys() == {k for k in theirs.state_dict() if not k.startswith("backbone.")}
    theirs.load_state_dict(heads, strict=False)
    theirs.backbone = _Slot(ours.backbone)
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    pixel_values, labels = expected["pixel_values"].to(dtype), expected["labels"]
    with torch.no_grad():
        got = ours.to(dtype).eval()(pixel_values, labels)
        want = theirs.to(dtype).eval()(pixel_values=pixel_values, labels=labels)
    assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)


def test_modules_swapped_in_by_name_run():
    """export.fix_adaptive_pools swaps each pool by name and SyncBatchNorm each BatchNorm: the
    forward must run the new modules (transformers' pyramid pooling also keeps lists)."""
    model = randomized(NatForSemanticSegmentation(tiny_config()))
    x = torch.randn(1, 3, 64, 64)
    expected = segment(model, x).logits
    pools = [n for n, m in model.named_modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert pools == [f"decode_head.psp_modules.{i}.0" for i in range(4)]
    for name in pools:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, torch.nn.Sequential(model.get_submodule(name)))
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    new = [
        m for m in model.modules() if isinstance(m, (torch.nn.Sequential, torch.nn.SyncBatchNorm))
    ]
    ran = set()
    for module in new:
        module.register_forward_hook(lambda m, i, o: ran.add(id(m)))
    model.eval()(x, torch.zeros(1, 64, 64, dtype=torch.long))  # labels: the auxiliary head runs
    assert ran == {id(m) for m in new}
    torch.testing.assert_close(segment(model, x).logits, expected, rtol=0, atol=0)


def test_loss_is_mean_cross_entropy_over_labelled_pixels_and_zero_without_any():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, :2] = 255
    log_p = logits.log_softmax(1)  # by hand: pick each labelled pixel's log-probability
    kept = [
        (b, i, j) for b in range(2) for i in range(4) for j in range(5) if labels[b, i, j] != 255
    ]
    by_hand = -sum(log_p[b, labels[b, i, j], i, j] for b, i, j in kept) / len(kept)
    assert torch.allclose(segmentation_loss(logits, labels, 255), by_hand)
    nothing = segmentation_loss(logits, torch.full_like(labels, 255), 255)
    nothing.backward()
    assert nothing.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_auxiliary_logits_with_labels_or_in_training_only():
    model = randomized(NatForSemanticSegmentation(tiny_config()))
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    assert segment(model, x).auxiliary_logits is None
    with_labels = segment(model, x, labels)
    assert with_labels.auxiliary_logits.shape == (2, 4, 64, 64)
    decode = segmentation_loss(with_labels.logits, labels, 255)
    auxiliary = segmentation_loss(with_labels.auxiliary_logits, labels, 255)
    assert torch.allclose(with_labels.loss, decode + 0.4 * auxiliary)
    assert model.train()(x).auxiliary_logits is not None
    no_aux = NatForSemanticSegmentation(tiny_config(use_auxiliary_head=False))
    assert no_aux.auxiliary_head is None and segment(no_aux, x, labels).auxiliary_logits is None


def test_gradients_reach_every_parameter():
    # seeded: stochastic depth drops a whole block for both images in about 1 of 40 RNG states
    # (a zero gradient there), and the state a test inherits depends on the worker's earlier tests
    torch.manual_seed(0)
    model = NatForSemanticSegmentation(tiny_config(dinat=True)).train()
    labels = torch.randint(0, 4, (2, 48, 64))
    labels[:, :8] = 255
    model(torch.randn(2, 3, 48, 64), labels).loss.backward()
    names = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert names == []
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {
        "backbone",
        "decode_head",
        "auxiliary_head",
    }


def test_set_attention_backend_reaches_the_backbone():
    model = NatForSemanticSegmentation(tiny_config())
    model.set_attention_backend("reference")
    backends = {m.backend for m in model.modules() if hasattr(m, "rpb")}
    assert backends == {"reference"} and model.config.backbone.attention_backend == "reference"


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEGMENTATION)
def test_config_json_matches_transformers_and_round_trips(name):
    theirs = json.loads((FIXTURES / name / "config.json").read_text())
    config = UperNetConfig.from_json(FIXTURES / name / "config.json")
    ours = config.to_dict()
    for key in theirs.keys() - {"backbone_config", "torch_dtype", "transformers_version"}:
        assert ours[key] == theirs[key], key
    for key, value in theirs["backbone_config"].items():
        assert ours["backbone_config"][key] == value, key
    assert UperNetConfig.from_dict(ours) == config


def test_from_variant_outputs_every_stage_with_the_papers_head():
    config = UperNetConfig.from_variant(
        "dinat_tiny", num_labels=150, backbone_overrides={"drop_path_rate": 0.3}
    )
    assert config.backbone.out_features == ALL_STAGES and config.backbone.drop_path_rate == 0.3
    assert config.backbone.dilations == NatConfig.from_variant("dinat_tiny").dilations
    assert (config.hidden_size, config.auxiliary_channels, config.pool_scales) == (
        512,
        256,
        (1, 2, 3, 6),
    )
    assert config.backbone_channels == [64, 128, 256, 512] and config.auxiliary_in_channels == 256
    assert config.replace(num_labels=3).id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    with pytest.raises(ValueError, match="unknown variant 'nat_huge'"):
        UperNetConfig.from_variant("nat_huge", num_labels=3)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_labels": 1}, "at least 2 classes"),
        ({"pool_scales": ()}, "pool_scales must list sizes >= 1"),
        ({"pool_scales": (1, 0)}, r"pool_scales\[1\] must be an integer >= 1"),
        ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
        ({"auxiliary_num_convs": 0}, "auxiliary_num_convs must be an integer >= 1"),
        ({"auxiliary_loss_weight": -1.0}, "auxiliary_loss_weight must be >= 0"),
        ({"id2label": {0: "a", 2: "b"}}, r"id2label keys must be 0..1"),
        ({"backbone": {"embed_dim": 16}}, "backbone must be a NatConfig"),
    ],
)
def test_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)


def test_the_auxiliary_head_needs_a_third_feature_map():
    backbone = tiny_config().backbone.replace(out_features=["stage3", "stage4"])
    with pytest.raises(ValueError, match=r"out_features=\['stage3', 'stage4'\] has 2"):
        UperNetConfig(backbone=backbone, num_labels=3)
    assert UperNetConfig(backbone=backbone, num_labels=3, use_auxiliary_head=False).num_labels == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"backbone_config": {"model_type": "convnext", "depths": [3, 3, 9, 3]}},
            "backbone_config.model_type must be 'nat' or 'dinat'.*got backbone_config.model_type='convnext'",
        ),
        ({"backbone_config": None}, "backbone_config is missing"),
        ({"backbone": "microsoft/resnet-50"}, "only an inline NAT/DiNAT backbone_config"),
        ({"use_timm_backbone": True}, "use_timm_backbone=True"),
        ({"auxiliary_in_channels": 32}, "auxiliary_in_channels=32 disagrees with the backbone"),
        ({"model_type": "nat"}, "model_type must be 'upernet'.*from_backbone"),
    ],
)
def test_folder_errors_name_what_they_found(tmp_path, change, message):
    folder = tmp_path / "folder"
    shutil.copytree(NAT, folder)
    data = {**json.loads((NAT / "config.json").read_text()), **change}
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        NatForSemanticSegmentation.from_pretrained(folder)


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEGMENTATION)
def test_save_pretrained_writes_transformers_tensors_and_loads_back_bit_exactly(name, tmp_path):
    model = NatForSemanticSegmentation.from_pretrained(FIXTURES / name)
    model.save_pretrained(tmp_path / "saved")
    theirs, ours = (
        load_file(str(FIXTURES / name / "model.safetensors")),
        load_file(str(tmp_path / "saved" / "model.safetensors")),
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    again = NatForSemanticSegmentation.from_pretrained(tmp_path / "saved")
    assert again.config == model.config
    mine = model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in again.state_dict().items())
    x = load_file(str(FIXTURES / name / "expected.safetensors"))["pixel_values"]
    assert torch.equal(segment(again, x).logits, segment(model, x).logits)


def test_round_trip_of_a_fresh_model_without_auxiliary_head(tmp_path):
    model = randomized(
        NatForSemanticSegmentation(
            tiny_config(use_auxiliary_head=False, num_labels=None, id2label={0: "a", 1: "b"})
        )
    )
    # attention_backend is not written to config.json (a choice of kernel, not of weights)
    again = NatForSemanticSegmentation.from_pretrained(
        model.save_pretrained(tmp_path), attention_backend="torch"
    )
    assert again.config == model.config and again.auxiliary_head is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_other_classes_get_fresh_classifiers_and_keep_everything_else(caplog):
    reference = NatForSemanticSegmentation.from_pretrained(NAT)
    with caplog.at_level(logging.WARNING, logger="nat_lightning.models.upernet"):
        model = NatForSemanticSegmentation.from_pretrained(NAT, num_labels=3)
    assert "newly initialised for num_labels=3 (the checkpoint has 5 classes)" in caplog.text
    assert model.decode_head.classifier.weight.shape == (3, 32, 1, 1)
    assert model.auxiliary_head.classifier.weight.shape == (3, 16, 1, 1)
    assert torch.equal(model.decode_head.classifier.bias, torch.zeros(3))
    theirs = reference.state_dict()
    kept = {k: v for k, v in model.state_dict().items() if ".classifier." not in k}
    assert len(kept) == len(theirs) - 4 and all(torch.equal(v, theirs[k]) for k, v in kept.items())
    named = NatForSemanticSegmentation.from_pretrained(NAT, id2label={0: "x", 1: "y"})
    assert (
        named.config.id2label == {0: "x", 1: "y"} and named.decode_head.classifier.out_channels == 2
    )
    with pytest.raises(ValueError, match="num_labels=4 disagrees with id2label"):
        NatForSemanticSegmentation.from_pretrained(NAT, num_labels=4, id2label={0: "x", 1: "y"})


def test_loading_is_strict_with_keys_and_shapes_listed(tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(NAT, folder)
    state = load_file(str(NAT / "model.safetensors"))
    del state["decode_head.bottleneck.conv.weight"]
    state["decode_head.extra.weight"] = torch.ones(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"missing keys \[decode_head.bottleneck.conv.weight\]; "
        r"unexpected keys \[decode_head.extra.weight\]",
    ):
        NatForSemanticSegmentation.from_pretrained(folder)
    data = json.loads((NAT / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "hidden_size": 24}))
    shutil.copy(NAT / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"shape mismatches \[.*decode_head.bottleneck.conv.weight: "
        r"checkpoint \(32, 256, 3, 3\) vs model \(24, 224, 3, 3\)",
    ):
        NatForSemanticSegmentation.from_pretrained(folder)
    with pytest.raises(ValueError, match="is a file; expected a transformers UperNet folder"):
        NatForSemanticSegmentation.from_pretrained(NAT / "model.safetensors")
    with pytest.raises(ValueError, match="labels must be \\(batch, height, width\\)"):
        segment(
            NatForSemanticSegmentation(tiny_config()),
            torch.randn(1, 3, 64, 64),
            torch.zeros(1, 32, 32, dtype=torch.long),
        )


# -- backbones from classification checkpoints ----------------------------------------------------


def classifier_shaped(**fields) -> UperNetConfig:
    """The hf_nat_tiny_random classifier's architecture, all four stages out."""
    backbone = NatConfig.from_pretrained_dir(CLASSIFIER).replace(out_features=ALL_STAGES)
    return UperNetConfig(
        backbone=backbone, num_labels=6, hidden_size=16, auxiliary_channels=8, **fields
    )


def check_backbone_from_classifier(model: NatForSemanticSegmentation) -> None:
    encoder = NatForImageClassification.from_pretrained(CLASSIFIER).nat.state_dict()
    backbone = model.backbone.state_dict()
    shared = {k for k in encoder if not k.startswith("norm.")}
    assert shared and shared == {k for k in backbone if not k.startswith("hidden_states_norms.")}
    assert all(torch.equal(backbone[k], encoder[k]) for k in shared)
    for norm in model.backbone.hidden_states_norms.values():  # fresh: (1, 0)
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    fresh = NatForSemanticSegmentation(model.config).state_dict()
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    for key, value in heads.items():  # fresh heads: unit BatchNorm, zero biases, small convs
        if key.endswith(("batch_norm.weight", "running_var", "bias")):
            assert torch.equal(value, fresh[key]), key
        elif key.endswith("conv.weight"):
            assert 0 < value.std() < 0.03, key


def test_from_backbone_folder_reports_what_it_ignores_and_initialises(caplog):
    with caplog.at_level(logging.INFO, logger="nat_lightning.models.pretrained"):
        model = NatForSemanticSegmentation.from_backbone(CLASSIFIER, classifier_shaped())
    check_backbone_from_classifier(model)
    assert "does not use [head.bias, head.weight, norm.bias, norm.weight]" in caplog.text
    assert f"backbone norms of {ALL_STAGES} are newly initialised" in caplog.text


@pytest.mark.parametrize("naming", ["ours", "transformers", "segmentation"])
def test_from_backbone_state_dict(naming):
    classifier = NatForImageClassification.from_pretrained(CLASSIFIER)
    state = {
        "ours": classifier.state_dict(),  # nat.patch_embed..., head.*: what a NatClassifier holds
        "transformers": load_file(str(CLASSIFIER / "model.safetensors")),
        "segmentation": NatForSemanticSegmentation.from_backbone(
            CLASSIFIER, classifier_shaped()
        ).state_dict(),
    }[naming]
    check_backbone_from_classifier(
        NatForSemanticSegmentation.from_backbone(state, classifier_shaped())
    )


def test_from_backbone_refuses_another_architecture():
    config = classifier_shaped()
    dinat = config.replace(backbone=config.backbone.replace(dilations=[[1], [1, 2], [1, 2], [1]]))
    with pytest.raises(
        ValueError, match=r"has dilations=\[\[1\], \[1, 1\], \[1, 1\], \[1\]\], but"
    ):
        NatForSemanticSegmentation.from_backbone(CLASSIFIER, dinat)
    wider = config.replace(backbone=config.backbone.replace(embed_dim=32))
    with pytest.raises(ValueError, match="shape mismatches"):
        NatForSemanticSegmentation.from_backbone(CLASSIFIER, wider)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        NatForSemanticSegmentation.from_backbone({"fc.weight": torch.ones(1)}, config)


# -- transformers' own UperNetForSemanticSegmentation reads our folders ---------------------------

_TRANSFORMERS_SCRIPT = """
import sys
import natten.functional as F
import torch
from safetensors.torch import load_file, save_file
if not hasattr(F, "natten2dqkrpb"):  # the names transformers 4.x imports, on NATTEN 0.17.5's kernels
    F.natten2dqkrpb = lambda q, k, rpb, ks, dil: F.na2d_qk(q, k, ks, dil, rpb=rpb)
    F.natten2dav = lambda a, v, ks, dil: F.na2d_av(a, v, ks, dil)
from transformers import UperNetForSemanticSegmentation
folder, inputs, output = sys.argv[1:]
model = UperNetForSemanticSegmentation.from_pretrained(folder).eval()
batch = load_file(inputs)
with torch.no_grad():
    out = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
save_file({"logits": out.logits.contiguous(), "loss": out.loss.reshape(1)}, output)
"""


@pytest.mark.skipif(
    not (TF440 / "tf440" / "transformers").is_dir() or not (TF440 / "venv/bin/python").is_file(),
    reason=f"transformers 4.40.2 environment not at {TF440} (setup_transformers440.sh; TRANSFORMERS440_DIR)",
)
@pytest.mark.parametrize("dinat", [False, True], ids=["nat", "dinat"])
def test_transformers_loads_our_folder_and_computes_our_logits(dinat, tmp_path):
    model = randomized(NatForSemanticSegmentation(tiny_config(dinat, auxiliary_concat_input=True)))
    model.save_pretrained(tmp_path / "folder")
    generator = torch.Generator().manual_seed(1)
    batch = {
        "pixel_values": torch.randn(2, 3, 64, 48, generator=generator),
        "labels": torch.randint(0, 4, (2, 64, 48), generator=generator),
    }
    batch["labels"][:, :5] = 255
    save_file(batch, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "run.py").write_text(_TRANSFORMERS_SCRIPT)
    args = [
        TF440 / "venv/bin/python",
        tmp_path / "run.py",
        tmp_path / "folder",
        tmp_path / "inputs.safetensors",
        tmp_path / "out.safetensors",
    ]
    env = {**os.environ, "PYTHONPATH": str(TF440 / "tf440"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(a) for a in args], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = load_file(str(tmp_path / "out.safetensors"))
    ours = segment(model, batch["pixel_values"], batch["labels"])
    assert relative_error(ours.logits, theirs["logits"]) < 1e-5
    assert relative_error(ours.loss.reshape(1), theirs["loss"]) < 1e-5
