"""NatUniversalSegmenter: the recipe's optimiser groups, networks from pretrained folders and
checkpoints (against the loaders they must equal), classes and stuff from the data, OneFormer's
task prompt through a tokenizer, instance outputs without stuff, and the arguments refused."""

import json

import lightning as L
import pytest
import torch
from tests.conftest import FIXTURES

from nat_lightning import NatConfig, NatForUniversalSegmentation, NatUniversalSegmenter
from nat_lightning.data import HFPanopticDataModule
from nat_lightning.models.nat import NatBackbone
from nat_lightning.tasks.universal_outputs import instance_segmentation, things_only

TINY = NatConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], kernel_size=3,
                 mlp_ratio=1.0)  # fmt: skip
HEADS = {"num_queries": 4, "decoder_layers": 2, "hidden_dim": 32, "feature_size": 32,
         "mask_feature_size": 32, "encoder_layers": 1, "encoder_feedforward_dim": 32,
         "dim_feedforward": 32, "num_attention_heads": 2, "train_num_points": 64}  # fmt: skip
MASK2FORMER = FIXTURES / "hf_mask2former_dinat_tiny_random"


def quiet(tmp_path, **overrides) -> L.Trainer:
    settings = {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 1,
                "limit_val_batches": 1, "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "enable_checkpointing": False,
                "default_root_dir": str(tmp_path), "num_sanity_val_steps": 0}  # fmt: skip
    return L.Trainer(**{**settings, **overrides})


def test_the_optimiser_gives_the_backbone_a_tenth_of_the_lr_and_no_decay_to_embeddings():
    model = NatUniversalSegmenter(model=TINY, heads=HEADS)
    assert model.hparams.lr == 1e-3 and model.hparams.weight_decay == 0.05  # no pretrained
    names = {id(p): n for n, p in model.network.named_parameters()}
    seen = {}
    for group in model._param_groups():
        for p in group["params"]:
            seen[names[id(p)]] = (group["lr_scale"], group["weight_decay"])
    assert set(seen) == set(names.values())
    for name, (scale, decay) in seen.items():
        assert scale == (0.1 if name.startswith("backbone.") else 1.0), name
        embedding = name.endswith(("queries_embedder.weight", "queries_features.weight",
                                   "level_embed.weight"))  # fmt: skip
        norm_or_bias = name.endswith(".bias") or ".norm" in name or "layernorm" in name
        if embedding or norm_or_bias or "rpb" in name:
            assert decay == 0.0, name
    assert any(d == 0.05 for _, d in seen.values())
    assert any(n.endswith("queries_embedder.weight") for n in seen)


def test_a_pretrained_mask2former_folder_is_the_whole_network():
    model = NatUniversalSegmenter(pretrained=str(MASK2FORMER), attention_backend="reference")
    theirs = NatForUniversalSegmentation.from_pretrained(MASK2FORMER, attention_backend="reference")
    assert model.hparams.lr == 1e-4  # the papers' LR for pretrained weights
    ours, expected = model.network.state_dict(), theirs.state_dict()
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in ours)
    config = json.loads((MASK2FORMER / "config.json").read_text())
    assert model.id2label == {int(k): v for k, v in config["id2label"].items()}
    with pytest.raises(ValueError, match=r"architecture='oneformer' but pretrained=.* mask2former"):
        NatUniversalSegmenter(pretrained=str(MASK2FORMER), architecture="oneformer")
    with pytest.raises(ValueError, match=r"num_queries=7 \(it has"):
        NatUniversalSegmenter(pretrained=str(MASK2FORMER), heads={"num_queries": 7})


def test_a_classification_folder_gives_the_backbone_under_fresh_heads():
    folder = FIXTURES / "hf_dinat_tiny_random"
    model = NatUniversalSegmenter(pretrained=str(folder), heads=HEADS)
    backbone = NatBackbone.from_pretrained(folder)
    ours = model.network.backbone.state_dict()
    for name, value in backbone.state_dict().items():
        if name in ours:
            assert torch.equal(ours[name], value), name
    assert model.network.backbone.config.dilations == backbone.config.dilations


def test_a_checkpoint_rebuilds_the_network_and_relabels_fresh_classifiers(tmp_path):
    model = NatUniversalSegmenter(model=TINY, heads=HEADS, stuff_ids=[3, 4])
    path = tmp_path / "m.ckpt"
    trainer = quiet(tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    again = NatUniversalSegmenter.load_from_checkpoint(path, weights_only=True)
    assert again.stuff_ids == (3, 4) and again.thing_ids == (0, 1, 2)
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    # a new run on other classes: the checkpoint's network, fresh classifiers
    relabelled = NatUniversalSegmenter(pretrained=str(path), id2label={0: "a", 1: "b"})
    assert relabelled.network.heads.class_predictor.out_features == 3  # and "no object"
    kept = relabelled.network.backbone.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in model.network.backbone.state_dict().items())


def test_classes_and_stuff_come_from_the_data_and_an_epoch_runs(tmp_path):
    data = HFPanopticDataModule.embedded(batch_size=2, thing_classes=["circle"])
    model = NatUniversalSegmenter(model=TINY, heads=HEADS)
    backbone = {k: v.clone() for k, v in model.network.backbone.state_dict().items()}
    trainer = quiet(tmp_path, max_steps=1)
    trainer.fit(model, datamodule=data)
    assert model.stuff_ids == (1, 2, 3, 4) and model.hparams.stuff_ids == [1, 2, 3, 4]
    assert model.id2label == data.id2label
    assert any(not torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())
    for key in ("val/pq", "val/map", "val/miou", "val/loss", "val/pq_stuff"):
        assert key in trainer.callback_metrics, key


def test_trainer_fit_without_data_trains_on_the_embedded_panoptic_shapes(tmp_path):
    model = NatUniversalSegmenter()
    trainer = quiet(tmp_path)
    trainer.fit(model)
    assert model.id2label == {0: "circle", 1: "square", 2: "triangle", 3: "sky", 4: "ground"}
    assert model.stuff_ids == (3, 4) and "val/pq" in trainer.callback_metrics


def test_instance_outputs_keep_things_only():
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(1, 6, 4) * 3, torch.randn(1, 6, 8, 8) * 3
    found = instance_segmentation(class_logits, mask_logits, 0.0, [(8, 8)])[0]
    kept = things_only(found, stuff_ids=[2])
    labels = [s["label_id"] for s in found["segments_info"]]
    assert 2 in labels and 2 not in [s["label_id"] for s in kept["segments_info"]]
    expected = [i for i, label in enumerate(labels) if label != 2]  # brute force
    assert torch.equal(kept["masks"], found["masks"][expected])
    for k, segment in enumerate(kept["segments_info"]):
        assert segment["id"] == k
        assert segment["score"] == found["segments_info"][expected[k]]["score"]
        owner = kept["segmentation"] == k
        assert (kept["masks"][k] | ~owner).all()  # a pixel painted k lies in mask k


def word_tokenizer(folder) -> None:
    """A word-level tokenizer folder that AutoTokenizer reads (the CLIP one is on the Hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "the", "task", "is", "panoptic", "instance", "semantic"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]",
              "unk_token": "[UNK]"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_oneformer_conditions_on_its_task_prompt_and_checkpoints_keep_the_token_ids(tmp_path):
    word_tokenizer(tmp_path / "tok")
    heads = {"num_queries": 4, "decoder_layers": 2, "hidden_dim": 32, "conv_dim": 32,
             "mask_dim": 32, "encoder_layers": 1, "encoder_feedforward_dim": 32,
             "dim_feedforward": 32, "num_attention_heads": 2, "train_num_points": 64,
             "task_seq_len": 6, "query_dec_layers": 1, "text_encoder_context_length": 6,
             "text_encoder_width": 32, "is_training": False}  # fmt: skip
    with pytest.raises(ValueError, match="needs the token ids of its task prompt"):
        NatUniversalSegmenter(model=TINY, architecture="oneformer", heads=heads)
    model = NatUniversalSegmenter(
        model=TINY, architecture="oneformer", heads=heads, tokenizer=str(tmp_path / "tok")
    )
    assert model.hparams.task_token_ids == {"panoptic": [2, 3, 4, 5, 0, 0],
                                            "instance": [2, 3, 4, 6, 0, 0],
                                            "semantic": [2, 3, 4, 7, 0, 0]}  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        panoptic, semantic = model(x, "panoptic"), model(x, "semantic")
    assert not torch.equal(panoptic.class_queries_logits, semantic.class_queries_logits)
    trainer = quiet(tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    (tmp_path / "tok" / "tokenizer.json").unlink()  # the checkpoint alone suffices
    again = NatUniversalSegmenter.load_from_checkpoint(tmp_path / "one.ckpt", weights_only=True)
    with torch.no_grad():
        found = again.eval()(x, "panoptic")
    torch.testing.assert_close(found.class_queries_logits, panoptic.class_queries_logits)


def test_arguments_that_cannot_work_are_refused_by_name():
    with pytest.raises(ValueError, match=r"class_weights='auto': .* heads: \{class_weight"):
        NatUniversalSegmenter(model=TINY, heads=HEADS, class_weights="auto")
    with pytest.raises(ValueError, match=r"threshold=1.5: expected a probability"):
        NatUniversalSegmenter(model=TINY, heads=HEADS, threshold=1.5)
    with pytest.raises(ValueError, match=r"unknown mask2former head fields \['queries'\]"):
        NatUniversalSegmenter(model=TINY, heads={"queries": 4})


def test_semantic_data_keeps_checkpoints_by_miou_and_lr_steps_are_checked():
    from types import SimpleNamespace

    model = NatUniversalSegmenter(model=TINY, heads=HEADS)
    semantic = SimpleNamespace(columns=SimpleNamespace(kind="semantic"))
    panoptic = HFPanopticDataModule.embedded()
    assert model.monitored(semantic) == ("val/miou", "epoch{epoch:03d}-miou{val/miou:.4f}")
    assert model.monitored(panoptic) == ("val/pq", "epoch{epoch:03d}-pq{val/pq:.4f}")
    with pytest.raises(ValueError, match=r"lr_steps=\[0.5, 1.5\]: expected fractions"):
        NatUniversalSegmenter(model=TINY, heads=HEADS, lr_steps=[0.5, 1.5])
