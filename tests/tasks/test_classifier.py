import lightning as L
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image
from tests.conftest import FIXTURES

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.data import HFImageDataModule
from nat_lightning.tasks import NatClassifier

TINY = NatConfig(
    embed_dim=16, depths=[1, 1], num_heads=[1, 2], kernel_size=3, mlp_ratio=1.0, drop_path_rate=0.0
)


def digits(**overrides):
    settings = dict(
        image_size=16,
        crop_pct=1.0,
        crop_scale=(0.9, 1.0),
        hflip=0.0,
        rand_augment_ops=0,
        color_jitter=0.0,
        random_erasing=0.0,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        batch_size=32,
        num_workers=0,
        val_fraction=0.1,
    )
    return HFImageDataModule(**{**settings, **overrides})


def trainer(tmp_path, **overrides):
    settings = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
    )
    return L.Trainer(**{**settings, **overrides})


def test_default_fit_on_the_embedded_digits(tmp_path):
    model = NatClassifier()
    assert model.num_classes == 10 and model.network.config.embed_dim == 32
    t = trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    t.fit(model)
    assert 0.0 <= float(t.callback_metrics["val/acc1"]) <= 1.0 and "val/acc5" in t.callback_metrics
    assert "val/acc_class/7" in t.callback_metrics


def test_fit_learns_and_checkpoint_round_trip_keeps_labels(tmp_path):
    torch.manual_seed(0)
    dm = digits()
    model = NatClassifier(
        model=TINY,
        num_classes=dm.num_classes,
        id2label={i: f"digit{i}" for i in range(10)},
        lr=3e-3,
        warmup_epochs=0.2,
    )
    t = trainer(tmp_path, max_epochs=3, limit_train_batches=None, limit_val_batches=None)
    t.fit(model, datamodule=dm)
    assert float(t.callback_metrics["val/acc1"]) > 0.5  # chance is 0.1
    t.save_checkpoint(tmp_path / "model.ckpt")
    loaded = NatClassifier.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)
    assert loaded.id2label[3] == "digit3"
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    out = loaded.predict_step({"pixel_values": x, "ids": ["a", "b"]}, 0)
    assert out["top_ids"].shape == (2, 5) and out["top_labels"][0][0].startswith("digit")
    torch.testing.assert_close(out["top_probs"].sum(-1) <= 1.0 + 1e-6, torch.tensor([True, True]))


def test_mixup_training_step_uses_soft_targets(tmp_path):
    model = NatClassifier(model=TINY, num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0)
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(model, datamodule=digits())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finetune_from_the_fixture_checkpoint_with_new_classes(tmp_path):
    reference = NatForImageClassification.from_pretrained(FIXTURES / "hf_nat_tiny_random")
    model = NatClassifier(
        pretrained=str(FIXTURES / "hf_nat_tiny_random"), num_classes=10, finetune="linear_probe"
    )
    assert model.network.head.out_features == 10
    rpb = model.network.nat.levels[0].blocks[0].attn.rpb
    assert torch.equal(rpb, reference.nat.levels[0].blocks[0].attn.rpb)
    head_before = model.network.head.weight.detach().clone()
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=1).fit(
        model, datamodule=digits(image_size=32)
    )
    assert torch.equal(rpb, reference.nat.levels[0].blocks[0].attn.rpb)  # backbone frozen
    assert not torch.equal(model.network.head.weight, head_before)
    assert model.hparams.pretrained is None and model.hparams.model["embed_dim"] == 16


def test_backbone_thaws_at_the_given_epoch(tmp_path):
    model = NatClassifier(
        model=TINY, num_classes=10, finetune="freeze_backbone", unfreeze_at_epoch=1
    )
    weights = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            weights.append(pl_module.network.nat.patch_embed.proj[0].weight.detach().clone())

    start = model.network.nat.patch_embed.proj[0].weight.detach().clone()
    trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[Snapshot()]
    ).fit(model, datamodule=digits())
    assert torch.equal(weights[0], start) and not torch.equal(weights[1], start)


def test_ema_weights_are_validated_and_saved(tmp_path):
    model = NatClassifier(model=TINY, num_classes=10, ema_decay=0.5, lr=1e-2)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="ema")  # saved mid-fit
    t = trainer(
        tmp_path,
        limit_train_batches=3,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[saver],
    )
    t.fit(model, datamodule=digits())
    checkpoint = torch.load(tmp_path / "ema.ckpt", weights_only=True)
    assert "current_model_state" in checkpoint  # Lightning's EMAWeightAveraging at work
    key = "network.head.weight"
    assert not torch.equal(checkpoint["state_dict"][key], checkpoint["current_model_state"][key])


def test_a_checkpoint_head_that_disagrees_with_num_classes(tmp_path):
    model = NatClassifier(model=TINY, num_classes=10)
    trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=digits())
    path = tmp_path / "ten.ckpt"
    model.trainer.save_checkpoint(path)
    with pytest.raises(
        ValueError, match="head has 10 classes but this model has num_classes=4.*pretrained="
    ):
        NatClassifier.load_from_checkpoint(path, num_classes=4, id2label=None, weights_only=True)


def test_padding_labels_add_no_loss():
    logits = torch.randn(3, 5, requires_grad=True)
    loss = NatClassifier._cross_entropy(logits, torch.tensor([-100, -100, -100]))
    assert loss.item() == 0.0 and loss.requires_grad


def test_bad_arguments():
    with pytest.raises(ValueError, match="id2label has 3 entries but num_classes=4"):
        NatClassifier(model=TINY, num_classes=4, id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="unknown variant"):
        NatClassifier(model="nat_gigantic")


def test_one_class_is_refused_from_the_arguments_and_from_the_data(tmp_path):
    for given in ({"num_classes": 1}, {"id2label": {0: "cat"}}):
        with pytest.raises(ValueError, match="needs at least 2 classes, got 1; .*num_classes=2"):
            NatClassifier(model=TINY, **given)
    cats = Dataset.from_dict(
        {"image": [Image.new("RGB", (16, 16), "red")] * 4, "label": ["cat"] * 4}
    )
    dm = digits(dataset=cats.cast_column("image", ImageFeature()), batch_size=4, val_split=None)
    with pytest.raises(
        ValueError, match=r"the data's classes \['cat'\]: a classifier needs at least 2"
    ):
        trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(
            NatClassifier(model=TINY), datamodule=dm
        )


def test_test_without_data_evaluates_the_embedded_digits_as_validate_does(tmp_path):
    """Trainer().test(NatClassifier()), as validate: the embedded digits' validation split."""
    model = NatClassifier(model=TINY)
    validated = trainer(tmp_path, limit_val_batches=2).validate(model)[0]
    tested = trainer(tmp_path, limit_test_batches=2).test(model)[0]
    assert tested.keys() == {k.replace("val/", "test/") for k in validated}
    for key, value in validated.items():
        assert tested[key.replace("val/", "test/")] == pytest.approx(value, abs=1e-6), key


def test_classes_and_label_names_come_from_the_datamodule(tmp_path):
    colours = Dataset.from_dict(
        {
            "image": [Image.new("RGB", (16, 16), c) for c in ["red", "blue", "green"] * 4],
            "label": ["red", "blue", "green"] * 4,
        }
    ).cast_column("image", ImageFeature())
    dm = digits(dataset=colours, batch_size=4, val_split=None)
    model = NatClassifier(model=TINY)  # no num_classes: the data's three classes, by name
    trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=dm)
    assert model.num_classes == 3 and model.network.head.out_features == 3
    assert set(model.id2label.values()) == {"red", "blue", "green"}
    assert model.hparams.id2label == model.id2label and model.hparams.num_classes == 3
    assert model.hparams.preprocessing == {
        "image_size": 16,
        "crop_pct": 1.0,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }


def test_train_dataloaders_alone_never_validate_on_the_embedded_digits(tmp_path):
    dm = digits()
    dm.setup("fit")
    model = NatClassifier(model=TINY, num_classes=10)
    t = trainer(tmp_path, limit_train_batches=1, limit_val_batches=None)
    t.fit(model, train_dataloaders=dm.train_dataloader())
    assert "val/acc1" not in t.callback_metrics and sum(t.num_val_batches) == 0


def test_an_empty_batch_is_skipped_in_every_stage():
    model = NatClassifier(model=TINY, num_classes=10)
    empty = {"pixel_values": torch.zeros(0, 3, 16, 16), "labels": torch.zeros(0, dtype=torch.long)}
    assert model.training_step(empty, 0) is None
    model._evaluate("val", empty)  # nothing to score, no crash
    out = model.predict_step({**empty, "ids": ["a.png", "b.png"], "decoded": [False, False]}, 0)
    assert out["ids"] == ["a.png", "b.png"] and out["errors"] == ["undecodable image"] * 2
    assert out["top_ids"].shape == (0, 5)


def test_a_variant_name_beside_pretrained_is_checked():
    with pytest.raises(ValueError, match="model='nat_base' does not match pretrained=.*embed_dim"):
        NatClassifier(model="nat_base", pretrained=str(FIXTURES / "hf_nat_tiny_random"))
    model = NatClassifier(
        pretrained=str(FIXTURES / "hf_nat_tiny_random")
    )  # no model: the checkpoint's
    assert model.network.config.embed_dim == 16


def test_a_resumed_run_keeps_its_schedule_unless_asked(tmp_path):
    def fit(epochs, ckpt=None, **kwargs):
        model = NatClassifier(model=TINY, num_classes=10, warmup_epochs=0.5, **kwargs)
        t = trainer(tmp_path, max_epochs=epochs, limit_train_batches=2, limit_val_batches=0)
        t.fit(model, datamodule=digits(), ckpt_path=ckpt)
        return model, t

    _, first = fit(2)
    first.save_checkpoint(tmp_path / "two.ckpt")
    assert torch.load(tmp_path / "two.ckpt", weights_only=True)["lr_schedule"] == {
        "warmup_steps": 1,
        "total_steps": 4,
    }
    with pytest.warns(
        UserWarning, match="keeping the LR schedule it was sized for.*total 4.*gives 1 / 6"
    ):
        kept, _ = fit(3, tmp_path / "two.ckpt")
    assert kept.schedule == (1, 4)
    with pytest.warns(UserWarning, match="re-sizing"):
        resized, _ = fit(3, tmp_path / "two.ckpt", rescale_schedule=True)
    assert resized.schedule == (1, 6)


def test_a_training_step_does_not_wait_for_the_device(monkeypatch):
    """No bool() of a tensor computed from the batch: on a GPU each is a host sync. (Mixup's
    draws are item() of host-side RNG tensors, which never wait for the device.)"""
    calls = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: calls.append(self) or original(self))
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([1, 2, -100, 3])}
    for kwargs in ({}, {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}):
        model = NatClassifier(model=TINY, num_classes=10, **kwargs)
        model.log = lambda *a, **k: None
        calls.clear()
        loss = model.training_step(batch, 0)
        assert calls == [] and loss.ndim == 0 and torch.isfinite(loss)


def test_per_class_accuracy_is_opt_in_above_a_hundred_classes():
    assert "per_class" in NatClassifier(model=TINY, num_classes=100).val_metrics
    assert "per_class" not in NatClassifier(model=TINY, num_classes=1000).val_metrics
    assert (
        "per_class" in NatClassifier(model=TINY, num_classes=1000, log_per_class=True).val_metrics
    )
