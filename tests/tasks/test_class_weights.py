"""class_weights: the balanced formula, the weighted losses against hand computations, the buffer,
and the errors for bad input."""

import io
import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import IterableDataset
from PIL import Image

from nat_lightning import NatConfig
from nat_lightning.data import HFImageDataModule, shapes_datamodule
from nat_lightning.data.sources import Split
from nat_lightning.models.upernet import segmentation_loss
from nat_lightning.tasks import NatClassifier, NatSegmenter
from nat_lightning.tasks.class_weights import balanced_weights
from nat_lightning.tasks.classifier import soft_cross_entropy

TINY = NatConfig(
    embed_dim=16, depths=[1, 1], num_heads=[1, 2], kernel_size=3, mlp_ratio=1.0, drop_path_rate=0.0
)
SEG_TINY = NatConfig(
    embed_dim=16,
    depths=[1, 1, 1, 1],
    num_heads=[1, 1, 2, 2],
    kernel_size=3,
    mlp_ratio=1.0,
    drop_path_rate=0.0,
)
CLASSES = {0: "cat", 1: "dog", 2: "emu"}


def trainer(tmp_path, **overrides):
    settings = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "limit_train_batches": 1,
        "limit_val_batches": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
    }
    return L.Trainer(**{**settings, **overrides})


def digits(**overrides):
    settings = {
        "image_size": 16,
        "crop_pct": 1.0,
        "crop_scale": (0.9, 1.0),
        "hflip": 0.0,
        "rand_augment_ops": 0,
        "color_jitter": 0.0,
        "random_erasing": 0.0,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "batch_size": 32,
        "num_workers": 0,
        "val_fraction": 0.1,
    }
    return HFImageDataModule(**{**settings, **overrides})


# -- the formula --------------------------------------------------------------------------------------


def test_auto_weights_are_sklearns_balanced_formula():
    # n_total / (n_classes * count): 10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)
    got = balanced_weights([6, 3, 1], CLASSES)
    assert torch.allclose(got, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    mean = float((got * torch.tensor([6.0, 3.0, 1.0])).sum()) / 10  # over the examples
    assert math.isclose(mean, 1.0, rel_tol=1e-6)


def test_a_class_with_no_example_gets_the_largest_weight():
    # 5 / (3 * 4); the absent class: the largest of the others, 5 / (3 * 1)
    got = balanced_weights([4, 0, 1], CLASSES)
    assert torch.allclose(got, torch.tensor([5 / 12, 5 / 3, 5 / 3]))


def test_the_classifier_counts_the_training_split_and_prints_the_weights(tmp_path, caplog):
    data = digits()
    model = NatClassifier(model=TINY, class_weights="auto")
    with caplog.at_level("INFO"):
        trainer(tmp_path).fit(model, datamodule=data)
    counts = np.bincount(np.asarray(data.splits["train"].data["label"]), minlength=10)  # the oracle
    expected = counts.sum() / (10 * counts)
    assert np.allclose(model.class_weights.numpy(), expected, rtol=1e-5)
    assert data.label_counts() == counts.tolist()
    line = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("class_weights (auto")
    ]
    assert len(line) == 1 and f"0: {expected[0]:.4g}" in line[0]


def test_the_segmenter_counts_pixels_of_the_training_masks():
    data = shapes_datamodule()
    rows = data.splits["train"].data
    counts = np.zeros(data.num_classes, dtype=np.int64)
    indices = np.round(np.arange(64) * (len(rows) - 1) / 63).astype(int)  # 64 evenly spaced masks
    for row in rows.select(sorted(set(indices.tolist()))):
        ids = np.asarray(Image.open(io.BytesIO(row[data.columns.mask]["bytes"])))
        counts += np.bincount(ids[ids != 255].ravel(), minlength=data.num_classes)
    assert data.label_counts() == counts.tolist()


# -- the losses against hand computations ------------------------------------------------------------


def hand_weighted_loss(logits, targets, weights):
    """sum_i v_i * CE(t_i, p_i) / sum_i v_i with v_i = sum_c t_ic w_c, in Python floats."""
    numerator = denominator = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        log_z = math.log(sum(math.exp(x) for x in row))
        ce = -sum(t * (x - log_z) for t, x in zip(target, row))
        v = sum(t * w for t, w in zip(target, weights))
        numerator, denominator = numerator + v * ce, denominator + v
    return numerator / denominator


def test_the_classifiers_weighted_loss_with_label_smoothing_and_padding():
    torch.manual_seed(0)
    weights = [0.5, 2.0, 4.0]
    model = NatClassifier(
        model=TINY, num_classes=3, class_weights=weights, label_smoothing=0.1
    ).eval()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 2, -100, 1])
    loss = model._training_loss({"pixel_values": images, "labels": labels})
    logits = model(images).detach()
    kept = labels >= 0
    smoothed = F.one_hot(labels[kept], 3).double() * 0.9 + 0.1 / 3
    expected = hand_weighted_loss(logits[kept].double(), smoothed, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_without_smoothing_the_weighted_loss_is_pytorchs_weighted_cross_entropy():
    torch.manual_seed(1)
    logits, labels, weights = (
        torch.randn(6, 4),
        torch.tensor([0, 1, 1, 3, -100, 2]),
        torch.tensor([1.0, 3.0, 0.5, 2.0]),
    )
    targets = F.one_hot(labels.clamp(min=0), 4).float() * (labels >= 0)[:, None]
    got = soft_cross_entropy(logits, targets, labels, weights)
    assert torch.allclose(got, F.cross_entropy(logits, labels, weight=weights, ignore_index=-100))


def test_mixed_targets_weigh_each_example_by_its_targets_weights():
    torch.manual_seed(2)
    logits, weights = torch.randn(5, 3), [1.0, 5.0, 0.25]
    targets = torch.softmax(torch.randn(5, 3), -1)  # any soft targets (mixup of smoothed labels)
    got = soft_cross_entropy(
        logits, targets, torch.zeros(5, dtype=torch.long), torch.tensor(weights)
    )
    assert got.item() == pytest.approx(
        hand_weighted_loss(logits.double(), targets.double(), weights), rel=1e-5
    )


def test_a_mixup_fit_with_class_weights_trains(tmp_path):
    model = NatClassifier(model=TINY, class_weights="auto", mixup_alpha=0.8, cutmix_alpha=1.0)
    t = trainer(tmp_path)
    t.fit(model, datamodule=digits())
    assert math.isfinite(float(t.callback_metrics["train/loss"]))


def test_the_segmentation_loss_weighs_pixels_by_class():
    torch.manual_seed(3)
    logits, labels = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    labels[0, 0] = 255
    weights = torch.tensor([0.2, 1.0, 3.0])
    got = segmentation_loss(logits, labels, 255, weights)
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)
    flat = labels.reshape(-1)
    kept = flat != 255
    w = weights[flat[kept]]
    expected = -(w * log_p[kept].gather(1, flat[kept, None])[:, 0]).sum() / w.sum()  # by hand
    assert torch.allclose(got, expected)
    assert torch.allclose(
        segmentation_loss(logits, torch.full_like(labels, 255), 255, weights), torch.tensor(0.0)
    )


def test_the_segmenter_weighs_the_decode_and_auxiliary_losses():
    torch.manual_seed(4)
    weights = [0.5, 1.0, 2.0, 4.0, 8.0]
    model = NatSegmenter(
        model=SEG_TINY, hidden_size=16, auxiliary_channels=8, class_weights=weights, num_classes=5
    )
    model.train()
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    torch.manual_seed(5)
    loss = model._training_loss({"pixel_values": images, "labels": labels})
    torch.manual_seed(5)
    out = model.network(images)
    w = torch.tensor(weights)
    expected = F.cross_entropy(out.logits, labels, weight=w) + 0.4 * F.cross_entropy(
        out.auxiliary_logits, labels, weight=w
    )
    assert torch.allclose(loss, expected, rtol=1e-5)


# -- the buffer -----------------------------------------------------------------------------------------


def test_weights_are_a_buffer_saved_in_checkpoints_and_absent_without_them(tmp_path):
    model = NatClassifier(model=TINY, num_classes=3, class_weights=[1.0, 2.0, 3.0])
    assert "class_weights" in dict(model.named_buffers())
    assert model.to(torch.float64).class_weights.dtype == torch.float64  # moves with the model
    model = model.float()
    plain = NatClassifier(model=TINY, num_classes=3)
    assert "class_weights" not in plain.state_dict()  # checkpoints without weights still load
    path = tmp_path / "w.ckpt"
    state = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    torch.save(state, path)
    restored = NatClassifier.load_from_checkpoint(path, weights_only=True)
    assert restored.class_weights.tolist() == [1.0, 2.0, 3.0]
    # evaluated without weights: no unexpected key
    plain = NatClassifier.load_from_checkpoint(path, class_weights="none", weights_only=True)
    assert plain.class_weights is None


# -- bad input ------------------------------------------------------------------------------------------


def test_bad_class_weights_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"class_weights has 2 weights but the model has 3 classes \(\['cat', 'dog', 'emu'\]\)",
    ):
        NatClassifier(model=TINY, id2label=CLASSES, class_weights=[1.0, 2.0])
    with pytest.raises(
        ValueError,
        match=r"class_weights=\[1.0, -2.0\]: weights must be finite and >= 0, got \[-2.0\]",
    ):
        NatClassifier(model=TINY, class_weights=[1.0, -2.0])
    with pytest.raises(ValueError, match="class_weights='balanced': expected 'auto'"):
        NatSegmenter(model=SEG_TINY, class_weights="balanced")
    with pytest.raises(ValueError, match="every weight is 0"):
        NatClassifier(model=TINY, class_weights=[0, 0])
    # the data's classes decide the length: checked when fit takes them
    with pytest.raises(
        ValueError, match=r"class_weights has 3 weights but the model has 10 classes \(\['0', '1'"
    ):
        trainer(tmp_path).fit(
            NatClassifier(model=TINY, class_weights=[1, 2, 3]), datamodule=digits()
        )


def test_auto_needs_a_data_module_that_counts_and_a_stream_needs_a_list(tmp_path):
    data = digits()
    data.setup("fit")
    loader = data.train_dataloader()
    with pytest.raises(
        ValueError, match="class_weights=auto counts the labels .* give class_weights as a list"
    ):
        trainer(tmp_path).fit(
            NatClassifier(model=TINY, num_classes=10, class_weights="auto"),
            train_dataloaders=loader,
        )
    stream = digits()
    rows = IterableDataset.from_generator(lambda: iter([{"image": None, "label": 0}]))
    stream.__dict__["splits"] = {"train": Split("train", rows, None)}
    with pytest.raises(ValueError, match="is a stream .* give the model's class_weights as a list"):
        stream.label_counts()
