"""Multi-label classification: the loss against PyTorch's BCEWithLogitsLoss, val/map against
scikit-learn's average precision, auto pos_weight against its formula, TTA's mean sigmoid, the
predicted sets, and a fit, on one process and on two (metrics exact across uneven ranks)."""

from __future__ import annotations

import io
import signal

import lightning as L
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, List
from PIL import Image as PILImage
from sklearn.metrics import average_precision_score, f1_score

from nat_lightning import NatConfig
from nat_lightning.data import HFImageDataModule
from nat_lightning.tasks import NatClassifier
from nat_lightning.tasks import multi_label as ml
from nat_lightning.tasks.class_weights import counted_pos_weights
from nat_lightning.tasks.inference import classification_scores

IGNORE = -100
NAMES = ["red", "green", "blue"]
TINY = NatConfig(
    embed_dim=8, depths=[1], num_heads=[1], kernel_size=3, mlp_ratio=1.0, drop_path_rate=0.0
)


def colour_sets(n: int, seed: int = 0) -> Dataset:
    """Images whose label set is the colour channels that are on (the top half lit by the first,
    the bottom by the second, ... ): learnable, and every set occurs."""
    rng = np.random.default_rng(seed)
    images, sets = [], []
    for _ in range(n):
        on = [c for c in range(3) if rng.random() < 0.5]
        pixels = rng.integers(0, 40, size=(16, 16, 3), dtype=np.uint8)
        pixels[:, :, on] += 200
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, "PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
        sets.append(on)
    features = Features({"image": Image(), "tags": List(ClassLabel(names=NAMES))})
    return Dataset.from_dict({"image": images, "tags": sets}, features)


def colours(n: int = 96, **overrides) -> HFImageDataModule:
    settings = dict(image_size=16, crop_pct=1.0, crop_scale=(0.9, 1.0), hflip=0.0,
                    rand_augment_ops=0, color_jitter=0.0, random_erasing=0.0,
                    mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=16, num_workers=0,
                    val_fraction=0.25)  # fmt: skip
    return HFImageDataModule(colour_sets(n), **{**settings, **overrides})


def test_the_loss_is_bce_with_logits_over_the_labelled_rows():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    rows = torch.tensor([[1, 0, 1], [0, 0, 0], [IGNORE] * 3, [0, 1, 0], [1, 1, 1]])
    pos_weight = torch.tensor([1.0, 3.0, 0.5])
    keep = [0, 1, 3, 4]
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits[keep], rows[keep].float())
    loss = ml.multi_label_loss(logits, rows.clamp(min=0).float(), rows, pos_weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    padding = torch.full((2, 3), IGNORE)
    assert ml.multi_label_loss(logits[:2], padding.clamp(min=0).float(), padding).item() == 0


def test_smoothing_is_per_class_and_padding_targets_nothing():
    rows = torch.tensor([[1, 0], [IGNORE, IGNORE]])
    assert torch.allclose(ml.smoothed(rows, 0.2), torch.tensor([[0.9, 0.1], [0.0, 0.0]]))
    assert ml.label_rows(torch.tensor([2, IGNORE]), 3).tolist() == [[0, 0, 1], [IGNORE] * 3]


def test_map_is_sklearns_average_precision_over_the_classes_the_labels_hold():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, size=(40, 4))
    target[:, 3] = 0  # no positive: no AP, left out of the mean
    target[5] = IGNORE  # a padding row
    scores = rng.random((40, 4)).astype(np.float32)
    metrics = torch.nn.ModuleDict(ml.stage_metrics(4, threshold=0.5))
    for part in np.array_split(np.arange(40), 3):  # batch by batch, as validation updates
        for name in ("ap", "positives", "f1_micro"):
            metrics[name].update(torch.from_numpy(scores[part]), torch.from_numpy(target[part]))
    values = ml.epoch_values(metrics, ["a", "b", "c", "d"], per_class=True)
    kept = np.flatnonzero(target[:, 0] != IGNORE)
    per_class = [average_precision_score(target[kept, c], scores[kept, c]) for c in range(3)]
    assert values["map"].item() == pytest.approx(np.mean(per_class), rel=1e-5)
    assert [values[f"ap_class/{n}"].item() for n in "abc"] == pytest.approx(per_class, rel=1e-5)
    assert torch.isnan(values["ap_class/d"])
    f1 = f1_score(target[kept], scores[kept] >= 0.5, average="micro")
    assert metrics["f1_micro"].compute().item() == pytest.approx(f1, rel=1e-5)


def test_auto_pos_weight_is_negatives_over_positives():
    class Data:
        def train_label_sets(self):
            return np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1], [IGNORE] * 3])

    weights = counted_pos_weights(Data(), {0: "a", 1: "b", 2: "c"})
    assert weights.tolist() == pytest.approx([1 / 3, 3 / 1, 1 / 3])


def test_flip_tta_averages_the_views_sigmoid():
    torch.manual_seed(0)
    weights = torch.randn(3, 3 * 4 * 4)

    def forward(x):
        return x.flatten(1) @ weights.T

    images = torch.randn(2, 3, 4, 4)
    scores = classification_scores(forward, images, flip=True, multi_label=True)
    mean = (forward(images).sigmoid() + forward(images.flip(-1)).sigmoid()) / 2
    assert torch.allclose(scores.sigmoid(), mean, atol=1e-6)


def test_predicted_sets_hold_the_classes_at_the_threshold_most_probable_first():
    probs = torch.tensor([[0.2, 0.9, 0.6], [0.1, 0.2, 0.3]])
    ids, names, values = ml.predicted_sets(probs, 0.5, dict(enumerate(NAMES)))
    assert ids == [[1, 2], []] and names == [["green", "blue"], []]
    assert values == [[pytest.approx(0.9), pytest.approx(0.6)], []]


def fit_trainer(tmp_path, **overrides) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, max_epochs=8, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0,
                    default_root_dir=str(tmp_path))  # fmt: skip
    return L.Trainer(**{**settings, **overrides})


def test_a_list_labelled_dataset_makes_the_classifier_multi_label_and_it_learns(tmp_path):
    torch.manual_seed(0)
    model = NatClassifier(model=TINY, lr=1e-2, warmup_epochs=0.0, label_smoothing=0.0)
    trainer = fit_trainer(tmp_path)
    trainer.fit(model, datamodule=colours())
    assert model.multi_label and model.hparams.multi_label is True
    assert model.id2label == dict(enumerate(NAMES))
    logged = trainer.callback_metrics
    assert logged["val/map"] > 0.9, dict(logged)
    assert {f"val/ap_class/{n}" for n in NAMES} <= set(logged)
    assert "val/acc1" not in logged
    dm = colours()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out = model.eval().predict_step(batch, 0)
    assert out["scores"].shape == (16, 3) and out["class_names"] == NAMES
    assert out["top_labels"] == [[NAMES[c] for c in ids] for ids in out["top_ids"]]


def test_an_explicit_single_label_model_refuses_label_sets_naming_the_fix(tmp_path):
    model = NatClassifier(model=TINY, multi_label=False)
    with pytest.raises(ValueError, match=r"multi_label=False.*--data.label_sets false"):
        fit_trainer(tmp_path, max_epochs=1).fit(model, datamodule=colours(32))


def test_a_multi_label_model_trains_on_single_label_data_as_one_class_sets(tmp_path):
    from .test_classifier import digits

    model = NatClassifier(model=TINY, multi_label=True, num_classes=10)
    trainer = fit_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(model, datamodule=digits())
    assert torch.isfinite(trainer.callback_metrics["val/map"])


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one_on_an_uneven_split(tmp_path):
    """25 validation rows: 13 and 12 per rank. The oracle: the trained weights evaluated here,
    on one process, with scikit-learn."""
    torch.manual_seed(0)
    dm = colours(100, batch_size=8)
    # (ddp_spawn loads rank 0's weights into this process's model: give it the data's head)
    model = NatClassifier(model=TINY, lr=1e-2, warmup_epochs=0.0, num_classes=3, multi_label=True)
    trainer = fit_trainer(tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1,
                          limit_train_batches=3)  # fmt: skip
    signal.alarm(240)
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        signal.alarm(0)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    dm.setup("fit")
    model.eval()
    scores, target = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            scores.append(model(batch["pixel_values"]).sigmoid())
            target.append(batch["labels"])
    scores, target = torch.cat(scores).numpy(), torch.cat(target).numpy()
    assert len(target) == 25
    held = [c for c in range(3) if target[:, c].any()]
    expected = np.mean([average_precision_score(target[:, c], scores[:, c]) for c in held])
    assert logged["val/map"] == pytest.approx(expected, abs=1e-5)
    f1 = f1_score(target, scores >= 0.5, average="macro", zero_division=0)
    assert logged["val/f1_macro"] == pytest.approx(f1, abs=1e-5)
