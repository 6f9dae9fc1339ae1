"""Classification test-time augmentation: flips and corner crops, the views' softmax averaged, in
validate, test and predict; training unchanged."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nat_lightning import NatConfig
from nat_lightning.tasks import NatClassifier
from nat_lightning.tasks.inference import classification_scores, crop_views

TINY = NatConfig(
    embed_dim=16, depths=[1, 1], num_heads=[1, 2], kernel_size=3, mlp_ratio=1.0, drop_path_rate=0.0
)


def asymmetric(images):
    """A 'network' that tells left from right: (B, 3) logits from the two halves and the mean."""
    half = images.shape[-1] // 2
    return torch.stack(
        [
            images[..., :half].mean((1, 2, 3)),
            images[..., half:].mean((1, 2, 3)) * 2,
            images.mean((1, 2, 3)),
        ],
        dim=1,
    )


def test_one_view_gives_the_logits_themselves():
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(classification_scores(asymmetric, images), asymmetric(images))


def test_flip_is_the_log_of_the_mean_of_the_two_softmaxes():
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    by_hand = (asymmetric(images).softmax(-1) + asymmetric(images.flip(-1)).softmax(-1)) / 2
    got = classification_scores(asymmetric, images, flip=True)
    assert torch.allclose(got.exp(), by_hand.float(), atol=1e-6)
    plain = asymmetric(images).float().log_softmax(-1)
    assert not torch.allclose(got, plain)  # the flip changed it


def test_five_crops_are_the_image_and_its_four_corners_at_the_images_size():
    columns = torch.arange(16.0).expand(1, 3, 16, 16)  # each pixel's value is its column
    rows = columns.transpose(-1, -2)
    views = crop_views(columns, 5)
    assert len(views) == 5 and all(v.shape == columns.shape for v in views) and views[0] is columns
    side = 14  # round(16 * 0.875)
    # left corners hold columns 0..13, right ones 2..15; top corners rows 0..13, bottom ones 2..15
    for view, left in zip(views[1:], (0, 16 - side, 0, 16 - side)):
        assert view.min() == pytest.approx(left, abs=0.5) and view.max() == pytest.approx(
            left + side - 1, abs=0.5
        )
    for view, top in zip(crop_views(rows, 5)[1:], (0, 0, 16 - side, 16 - side)):
        assert view.min() == pytest.approx(top, abs=0.5) and view.max() == pytest.approx(
            top + side - 1, abs=0.5
        )
    seen = []
    classification_scores(lambda x: seen.append(x) or asymmetric(x), columns, flip=True, crops=5)
    assert len(seen) == 10 and torch.equal(seen[5], columns.flip(-1))


def test_bad_crops_name_the_field():
    with pytest.raises(ValueError, match=r"tta_crops=3: expected 1 \(the image\) or 5"):
        NatClassifier(model=TINY, num_classes=3, tta_crops=3)


def batches(n=6, size=16):
    torch.manual_seed(0)
    images, labels = torch.randn(n, 3, size, size), torch.randint(0, 10, (n,))
    return [{"pixel_values": images[i], "labels": labels[i]} for i in range(n)], images, labels


def test_validate_and_predict_average_the_flipped_views(tmp_path):
    torch.manual_seed(0)
    # (10 classes: validate given loaders alone checks them against the embedded digits')
    model = NatClassifier(model=TINY, num_classes=10, tta_flip=True, label_smoothing=0.0).eval()
    rows, images, labels = batches()
    with torch.no_grad():
        probs = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2  # by hand
    loss = F.nll_loss(probs.log(), labels).item()
    t = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    metrics = t.validate(model, DataLoader(rows, batch_size=6), verbose=False)[0]
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val/acc1"] == pytest.approx((probs.argmax(-1) == labels).float().mean().item())
    out = t.predict(model, DataLoader(rows, batch_size=6))[0]
    assert torch.allclose(out["top_probs"], probs.topk(5, -1).values, atol=1e-6)


def test_training_is_unchanged_by_tta():
    torch.manual_seed(0)
    plain = NatClassifier(model=TINY, num_classes=10)
    augmented = NatClassifier(model=TINY, num_classes=10, tta_flip=True, tta_crops=5)
    augmented.load_state_dict(plain.state_dict())
    _, images, labels = batches()
    batch = {"pixel_values": images, "labels": labels}
    assert torch.equal(plain._training_loss(batch), augmented._training_loss(batch))
