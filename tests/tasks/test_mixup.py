import pytest
import torch

from nat_lightning.tasks.mixup import MixupCutmix


def test_label_smoothing_targets():
    targets = MixupCutmix(4, 0.0, 0.0, label_smoothing=0.2).smooth(torch.tensor([1, 3]))
    expected = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]])
    torch.testing.assert_close(targets, expected)


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    torch.manual_seed(0)
    images = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 0.0)])
    mixed, targets = MixupCutmix(2, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)(
        images, torch.tensor([0, 1])
    )
    lam = mixed[0, 0, 0, 0].item()  # image 0 is lam * 1 + (1 - lam) * 0
    assert 0 < lam < 1
    torch.testing.assert_close(targets[0], torch.tensor([lam, 1 - lam]))
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))


def test_cutmix_lambda_is_the_kept_area():
    torch.manual_seed(3)
    images = torch.stack([torch.full((1, 16, 16), 1.0), torch.full((1, 16, 16), 0.0)])
    for _ in range(5):
        mixed, targets = MixupCutmix(2, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)(
            images, torch.tensor([0, 1])
        )
        kept = mixed[0].mean().item()  # fraction of image 0's own pixels
        assert targets[0, 0].item() == pytest.approx(kept)


def test_prob_zero_never_mixes():
    images = torch.randn(4, 3, 8, 8)
    out, targets = MixupCutmix(3, 0.8, 1.0, prob=0.0, label_smoothing=0.0)(
        images, torch.tensor([0, 1, 2, 0])
    )
    assert torch.equal(out, images)
    assert torch.equal(targets.argmax(-1), torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize(
    "kwargs", [dict(mixup_alpha=-1.0), dict(prob=1.5), dict(label_smoothing=-0.1)]
)
def test_bad_settings_name_the_field(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        MixupCutmix(3, **kwargs)
