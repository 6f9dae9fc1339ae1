"""Mask2Former and OneFormer (transformers 5's heads) on our NAT/DiNAT backbone: parity with
transformers 4.40.2's outputs (the fixtures), checkpoint round trips, backbones from classifiers,
training losses and gradients, optimiser groups, imports, errors."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import FIXTURES

from nat_lightning.models import NatConfig, NatForImageClassification
from nat_lightning.models.universal import NatForUniversalSegmentation
from nat_lightning.models.universal_config import head_config
from nat_lightning.tasks.optim import param_groups

ARCHITECTURES = ["mask2former", "oneformer"]
CLASSIFIER = FIXTURES / "hf_dinat_tiny_random"
ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}  # max |error| / max |expected|
EXPECTED = {torch.float32: "expected.safetensors", torch.float64: "expected64.safetensors"}
# transformers 4.40.2 on NATTEN 0.17.5, as ../shared/reference/setup_transformers440.sh builds it
TF440 = Path(os.environ.get("TRANSFORMERS440_DIR", Path(__file__).parents[3] / "transformers440"))


def fixture(architecture: str) -> Path:
    return FIXTURES / f"hf_{architecture}_dinat_tiny_random"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


def tiny_backbone(**fields) -> NatConfig:
    """Four stages at 16-128 channels, kernel 3: 64 px gives 16, 8, 4 and 2 token maps."""
    base = {
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 2, 4],
        "kernel_size": 3,
        "mlp_ratio": 2.0,
        "dilations": [[1], [2], [1], [1]],
        "out_features": ALL_STAGES,
        "attention_backend": "torch",
    }
    return NatConfig(**{**base, **fields})


def tiny_heads(architecture: str, **fields):
    """Heads small enough to train on a CPU: 4 queries, 2 decoder layers, 32 channels."""
    base = {
        "num_labels": 3,
        "num_queries": 4,
        "decoder_layers": 2,
        "hidden_dim": 32,
        "num_attention_heads": 2,
        "encoder_layers": 1,
        "encoder_feedforward_dim": 32,
        "dim_feedforward": 32,
        "train_num_points": 64,
    }
    if architecture == "mask2former":
        base |= {"feature_size": 32, "mask_feature_size": 32}
    else:
        base |= {"conv_dim": 32, "mask_dim": 32, "task_seq_len": 6, "query_dec_layers": 1}
        base |= {"text_encoder_context_length": 6, "text_encoder_width": 32}
    return head_config(architecture, **{**base, **fields})


def tiny_model(architecture: str, **fields) -> NatForUniversalSegmentation:
    return NatForUniversalSegmentation(tiny_heads(architecture, **fields), tiny_backbone())


def task_inputs(model: NatForUniversalSegmentation, batch: int = 2) -> torch.Tensor | None:
    if model.architecture == "mask2former":
        return None
    return torch.randint(0, 50, (batch, model.config.task_seq_len))


def predict(model: NatForUniversalSegmentation, pixel_values, tasks=None):
    with torch.no_grad():
        return model.eval()(pixel_values, task_inputs=tasks)


def random_targets(batch: int, size: tuple[int, int], num_labels: int, generator):
    """Per image 1-3 instances: random binary masks and class ids, as transformers takes them."""
    masks, classes = [], []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (), generator=generator))
        masks.append((torch.rand(n, *size, generator=generator) > 0.5).float())
        classes.append(torch.randint(0, num_labels, (n,), generator=generator))
    return masks, classes


# -- parity with transformers' outputs (the fixtures) ---------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_fixture_parity_with_transformers(architecture, dtype):
    expected = load_file(str(fixture(architecture) / EXPECTED[dtype]))
    model = NatForUniversalSegmentation.from_pretrained(
        fixture(architecture), attention_backend="torch"
    )
    model = model.to(dtype).eval()
    pixel_values = expected["pixel_values"]
    assert pixel_values.dtype == dtype
    out = predict(model, pixel_values, expected.get("task_inputs"))
    with torch.no_grad():
        maps = model.backbone(pixel_values).feature_maps
    for key in ("class_queries_logits", "masks_queries_logits"):
        assert out[key].dtype == dtype and out[key].shape == expected[key].shape, key
        assert relative_error(out[key], expected[key]) <= TOLERANCE[dtype], key
    assert len(maps) == 4
    for i, feature_map in enumerate(maps):
        assert relative_error(feature_map, expected[f"feature_maps.{i}"]) <= TOLERANCE[dtype], i


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_pretrained_writes_the_fixtures_layout_and_loads_back_bit_exactly(
    architecture, tmp_path
):
    source = fixture(architecture)
    model = NatForUniversalSegmentation.from_pretrained(source, attention_backend="torch")
    model.save_pretrained(tmp_path)
    theirs, ours = (
        load_file(str(source / "model.safetensors")),
        load_file(str(tmp_path / "model.safetensors")),
    )
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    written = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    for key in set(original) - {"transformers_version", "torch_dtype", "num_hidden_layers"}:
        if key == "backbone_config":
            assert original[key].items() <= written[key].items()
        else:
            assert written[key] == original[key], key
    again = NatForUniversalSegmentation.from_pretrained(tmp_path, attention_backend="torch")
    expected = load_file(str(source / "expected.safetensors"))
    x, tasks = expected["pixel_values"][:1, :, :64, :64], expected.get("task_inputs")
    tasks = None if tasks is None else tasks[:1]
    first, second = predict(model, x, tasks), predict(again, x, tasks)
    assert torch.equal(first.class_queries_logits, second.class_queries_logits)
    assert torch.equal(first.masks_queries_logits, second.masks_queries_logits)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_round_trip_of_a_fresh_model(architecture, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(architecture, id2label={0: "sky", 1: "road", 2: "car"})
    model.save_pretrained(tmp_path)
    again = NatForUniversalSegmentation.from_pretrained(tmp_path, attention_backend="torch")
    assert again.config.id2label == {0: "sky", 1: "road", 2: "car"}
    assert again.backbone.config == model.backbone.config
    mine, theirs = model.state_dict(), again.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x, tasks = torch.randn(1, 3, 64, 64), task_inputs(model, 1)
    first, second = predict(model, x, tasks), predict(again, x, tasks)
    assert torch.equal(first.masks_queries_logits, second.masks_queries_logits)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_other_classes_get_fresh_classifiers_and_keep_everything_else(architecture, caplog):
    source = fixture(architecture)
    original = NatForUniversalSegmentation.from_pretrained(source).state_dict()
    with caplog.at_level(logging.WARNING, logger="nat_lightning.models.universal"):
        model = NatForUniversalSegmentation.from_pretrained(source, id2label={0: "a", 1: "b"})
    assert "newly initialised for num_labels=2 (the checkpoint has 4 classes)" in caplog.text
    assert model.config.num_labels == 2 and model.config.label2id == {"a": 0, "b": 1}
    fresh = {
        "mask2former": "heads.class_predictor.",
        "oneformer": "heads.model.transformer_module.decoder.class_embed.",
    }
    for key, value in model.state_dict().items():
        if key.startswith((fresh[architecture], "heads.criterion.empty_weight")):
            assert value.shape[0] == 3, key  # two classes and "no object"
        else:
            assert torch.equal(value, original[key]), key


def test_loading_is_strict_and_errors_name_what_they_found(tmp_path):
    source = fixture("mask2former")
    folder = tmp_path / "folder"
    shutil.copytree(source, folder)
    state = load_file(str(source / "model.safetensors"))
    del state["class_predictor.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \[heads.class_predictor.bias\]"):
        NatForUniversalSegmentation.from_pretrained(folder)
    with pytest.raises(ValueError, match="is a file; expected a transformers Mask2Former"):
        NatForUniversalSegmentation.from_pretrained(source / "model.safetensors")
    data = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "model_type": "upernet"}))
    with pytest.raises(ValueError, match="for UPerNet use NatForSemanticSegmentation"):
        NatForUniversalSegmentation.from_pretrained(folder)
    swin = {**data, "backbone_config": {**data["backbone_config"], "model_type": "swin"}}
    (folder / "config.json").write_text(json.dumps(swin))
    with pytest.raises(ValueError, match="backbone_config.model_type must be 'nat' or 'dinat'"):
        NatForUniversalSegmentation.from_pretrained(folder)


def test_a_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load 'shi-labs/oneformer_ade20k_dinat_large'"):
        NatForUniversalSegmentation.from_pretrained(
            "shi-labs/oneformer_ade20k_dinat_large", cache_dir=tmp_path
        )


# -- backbones from classification checkpoints ----------------------------------------------------


def check_backbone_from_classifier(model: NatForUniversalSegmentation) -> None:
    encoder = NatForImageClassification.from_pretrained(CLASSIFIER).nat.state_dict()
    backbone = model.backbone.state_dict()
    shared = {k for k in encoder if not k.startswith("norm.")}
    assert shared == {k for k in backbone if not k.startswith("hidden_states_norms.")}
    assert all(torch.equal(backbone[k], encoder[k]) for k in shared)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_from_backbone_takes_the_classifiers_weights_under_fresh_heads(architecture, caplog):
    with caplog.at_level(logging.INFO, logger="nat_lightning.models.pretrained"):
        model = NatForUniversalSegmentation.from_backbone(CLASSIFIER, tiny_heads(architecture))
    check_backbone_from_classifier(model)
    assert model.backbone.config.out_features == ALL_STAGES
    assert model.backbone.config.dilations == [[1], [1, 2], [1, 2], [1]]
    assert "does not use [head.bias, head.weight, norm.bias, norm.weight]" in caplog.text
    x = torch.randn(1, 3, 64, 64)
    assert predict(model, x, task_inputs(model, 1)).class_queries_logits.shape == (1, 4, 4)


def test_from_backbone_dilations_and_state_dicts():
    heads = tiny_heads("mask2former")
    detection = [[1], [1, 1], [2, 4], [1]]
    model = NatForUniversalSegmentation.from_backbone(CLASSIFIER, heads, dilations=detection)
    check_backbone_from_classifier(model)
    assert model.backbone.config.dilations == detection
    again = NatForUniversalSegmentation.from_backbone(
        model.state_dict(), heads, model.backbone.config
    )
    check_backbone_from_classifier(again)
    wrong = model.backbone.config
    with pytest.raises(
        ValueError, match=r"has dilations=\[\[1\], \[1, 2\], \[1, 2\], \[1\]\], but"
    ):
        NatForUniversalSegmentation.from_backbone(CLASSIFIER, heads, wrong)
    with pytest.raises(ValueError, match="has no config.json: pass backbone="):
        NatForUniversalSegmentation.from_backbone(model.state_dict(), heads)


# -- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_loss_is_finite_and_gradients_reach_backbone_and_heads(architecture):
    torch.manual_seed(0)  # stochastic depth, the sampled points
    model = tiny_model(architecture).train()
    generator = torch.Generator().manual_seed(1)
    masks, classes = random_targets(2, (48, 64), 3, generator)
    out = model(torch.randn(2, 3, 48, 64), masks, classes, task_inputs=task_inputs(model))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missed = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    # the pixel decoder's level_embed reaches the loss only through the deformable attention's
    # sampling offsets and attention weights, whose weights start at zero (Deformable DETR's
    # init): its first gradient is 0. OneFormer's contrastive temperature needs is_training.
    expected = ["heads.model.pixel_level_module.decoder.level_embed"]
    if architecture == "oneformer":
        expected.append("heads.criterion.logit_scale")
    assert missed == expected


def test_a_tiny_model_learns_one_batch():
    torch.manual_seed(0)
    model = tiny_model("mask2former").train()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    masks, classes = random_targets(2, (32, 32), 3, generator)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model(x, masks, classes).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_labels_and_task_inputs_are_checked():
    mask2former, oneformer = tiny_model("mask2former"), tiny_model("oneformer")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_labels and class_labels go together"):
        mask2former(x, mask_labels=[torch.zeros(1, 32, 32)])
    with pytest.raises(ValueError, match="OneFormer's; this is Mask2Former"):
        mask2former(x, task_inputs=torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="OneFormer needs task_inputs"):
        oneformer(x)


# -- optimiser groups, configs, imports -----------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layer_ids_cover_every_parameter_and_no_weight_decay_names_parameters(architecture):
    model = tiny_model(architecture)
    names = {n for n, _ in model.named_parameters()}
    ids = model.layer_ids()
    assert set(ids) == names
    top = model.backbone.top_layer_id
    assert max(ids.values()) == top and ids["backbone.patch_embed.proj.0.weight"] == 0
    assert all(layer == top for name, layer in ids.items() if name.startswith("heads."))
    no_decay = model.no_weight_decay()
    assert no_decay <= names
    assert "backbone.levels.0.blocks.0.attn.rpb" in no_decay
    assert "heads.model.transformer_module.queries_embedder.weight" in no_decay
    assert "backbone.levels.0.blocks.0.attn.qkv.weight" not in no_decay
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.9, lr_mults={"backbone.": 0.1})
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_set_attention_backend_reaches_the_backbone():
    model = tiny_model("mask2former")
    model.set_attention_backend("reference")
    assert model.backbone.config.attention_backend == "reference"


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown mask2former head fields \['backbone_config'"):
        head_config("mask2former", backbone_config={})
    with pytest.raises(ValueError, match="architecture must be one of"):
        head_config("maskformer")
    with pytest.raises(ValueError, match="config must be transformers' Mask2FormerConfig"):
        NatForUniversalSegmentation(tiny_backbone(), tiny_backbone())
    with pytest.raises(ValueError, match=r"config.feature_strides=\[4, 8, 16, 32\] must be"):
        NatForUniversalSegmentation(tiny_heads("mask2former"), tiny_backbone(out_features=None))


def test_from_variant_builds_the_papers_heads():
    model = NatForUniversalSegmentation.from_variant(
        "dinat_mini", "oneformer", num_labels=5, num_queries=10, decoder_layers=2
    )
    assert model.backbone.config.out_features == ALL_STAGES
    assert model.config.num_labels == 5 and model.config.hidden_dim == 256


_IMPORTS = """
import sys
import torch
import nat_lightning
# torchmetrics (through lightning) imports transformers' top level when it is installed; what
# must stay off the classifier's path is ours and transformers' segmentation models
heavy = ("nat_lightning.models.universal", "transformers.models.mask2former")
assert not any(m.startswith(heavy) for m in sys.modules), "import nat_lightning imported them"
from nat_lightning.models.universal import NatForUniversalSegmentation
for name in ("hf_mask2former_dinat_tiny_random", "hf_oneformer_dinat_tiny_random"):
    model = NatForUniversalSegmentation.from_pretrained(sys.argv[1] + "/" + name).eval()
    tasks = torch.zeros(1, 8, dtype=torch.long) if "oneformer" in name else None
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64), task_inputs=tasks)
bad = sorted(m for m in sys.modules if m.startswith(("transformers.models.dinat", "transformers.models.nat")))
print("IMPORTED", bad)
"""


def test_nothing_imports_transformers_dinat_or_nat():
    """In a fresh interpreter: nat_lightning alone imports neither universal.py nor transformers'
    Mask2Former; building and running both models imports neither transformers' DiNAT nor NAT."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS, str(FIXTURES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout


# -- transformers' own classes read our folders ---------------------------------------------------

_TRANSFORMERS_SCRIPT = """
import sys
import natten.functional as F
import torch
from safetensors.torch import load_file, save_file
if not hasattr(F, "natten2dqkrpb"):  # the names transformers 4.x imports, on NATTEN 0.17.5's kernels
    F.natten2dqkrpb = lambda q, k, rpb, ks, dil: F.na2d_qk(q, k, ks, dil, rpb=rpb)
    F.natten2dav = lambda a, v, ks, dil: F.na2d_av(a, v, ks, dil)
import transformers
folder, inputs, output = sys.argv[1:]
architecture = transformers.AutoConfig.from_pretrained(folder).architectures[0]
model = getattr(transformers, architecture).from_pretrained(folder).eval()
with torch.no_grad():
    out = model(**load_file(inputs))
save_file({k: out[k].contiguous() for k in ("class_queries_logits", "masks_queries_logits")}, output)
"""


def _has_transformers440() -> bool:
    scipy = list(TF440.glob("venv/lib/python*/site-packages/scipy"))
    return (TF440 / "tf440" / "transformers").is_dir() and bool(scipy)


@pytest.mark.skipif(
    not _has_transformers440(),
    reason=f"transformers 4.40.2 environment with scipy not at {TF440} (setup_transformers440.sh, "
    "then pip install scipy there; TRANSFORMERS440_DIR)",
)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_transformers_loads_our_folder_and_computes_our_outputs(architecture, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(architecture)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # nothing left at its initial value (zero biases, unit norms)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(tmp_path / "folder")
    inputs = {"pixel_values": torch.randn(2, 3, 64, 48, generator=generator)}
    if architecture == "oneformer":
        inputs["task_inputs"] = task_inputs(model)
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "run.py").write_text(_TRANSFORMERS_SCRIPT)
    args = [TF440 / "venv/bin/python", tmp_path / "run.py", tmp_path / "folder"]
    args += [tmp_path / "inputs.safetensors", tmp_path / "out.safetensors"]
    env = {**os.environ, "PYTHONPATH": str(TF440 / "tf440")}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "newly initialized" not in result.stderr and "not used" not in result.stderr
    theirs = load_file(str(tmp_path / "out.safetensors"))
    ours = predict(model, inputs["pixel_values"], inputs.get("task_inputs"))
    for key, value in theirs.items():
        assert relative_error(ours[key], value) <= 1e-4, key


def test_a_deep_copy_runs_its_own_backbone():
    """EMA and checkpoint averaging deep-copy the model: the copy's slot must call the copy's
    backbone, whose weights are the only ones the copy's state dict names."""
    import copy

    model = tiny_model("mask2former")
    twin = copy.deepcopy(model)
    assert twin.heads.model.pixel_level_module.encoder._backbone[0] is twin.backbone
    x = torch.randn(1, 3, 64, 64)  # 32 px: a 1x1 map, GroupNorm refuses
    assert torch.equal(
        predict(model, x).masks_queries_logits, predict(twin, x).masks_queries_logits
    )
    with torch.no_grad():
        twin.backbone.patch_embed.proj[0].weight.zero_()
    assert not torch.equal(
        predict(model, x).masks_queries_logits, predict(twin, x).masks_queries_logits
    )
