import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nat_lightning.tasks.inference import slide_logits, tta_scores, window_count


def pixelwise(images):
    """A network whose output at a pixel depends on that pixel alone."""
    return torch.stack([images.sum(1), images[:, 0] * images[:, 1], -images[:, 2]], dim=1)


def window_mean(images):
    """A network whose output depends on the whole window: each window's mean, everywhere."""
    return images.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 2, *images.shape[-2:]) * 1.0


def brute_force_slide(image: np.ndarray, crop: int, stride: int) -> np.ndarray:
    """Windows start every stride pixels plus one ending at the edge; each pixel averages the
    means of the windows that cover it (window_mean's output)."""
    h, w = image.shape[-2:]
    tops = sorted(set(range(0, max(h - crop, 0), stride)) | {max(h - crop, 0)})
    lefts = sorted(set(range(0, max(w - crop, 0), stride)) | {max(w - crop, 0)})
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for t in tops:
        for left in lefts:
            window = image[:, t : t + crop, left : left + crop]
            total[t : t + crop, left : left + crop] += window.mean()
            count[t : t + crop, left : left + crop] += 1
    return total / count, len(tops) * len(lefts)


@pytest.mark.parametrize(
    ("size", "crop", "stride"),
    [((16, 16), 8, 8), ((16, 24), 8, 4), ((15, 21), 8, 5), ((6, 20), 8, 6)],
)
def test_sliding_windows_equal_the_whole_image_for_a_pixelwise_network(size, crop, stride):
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    got = slide_logits(pixelwise, images, (crop, crop), (stride, stride))
    torch.testing.assert_close(got, pixelwise(images).float())


@pytest.mark.parametrize(
    ("size", "crop", "stride"),
    [((16, 16), 8, 8), ((16, 24), 8, 3), ((15, 21), 7, 5), ((5, 20), 8, 6)],
)
def test_overlapping_windows_are_averaged_as_brute_force(size, crop, stride):
    images = torch.rand(1, 3, *size, dtype=torch.float64)
    calls = []
    got = slide_logits(
        lambda x: calls.append(x.shape) or window_mean(x), images, (crop, crop), (stride, stride)
    )
    expected, windows = brute_force_slide(images[0].numpy(), crop, stride)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-5)
    assert len(calls) == windows == window_count(size, (crop, crop), (stride, stride))
    assert all(s[-2:] == (min(crop, size[0]), min(crop, size[1])) for s in calls)


def test_a_stride_larger_than_the_crop_is_refused():
    with pytest.raises(ValueError, match="stride <= crop_size"):
        slide_logits(pixelwise, torch.zeros(1, 3, 8, 8), (4, 4), (5, 4))


def conv(images):
    """A fixed network that is not mirror-symmetric."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 3, 3, generator=g)
    return F.conv2d(images, weight, padding=1)


def test_one_view_is_the_logits_themselves():
    images = torch.randn(2, 3, 8, 10)
    torch.testing.assert_close(tta_scores(conv, images), conv(images))


def test_flip_averages_the_softmax_of_the_mirrored_view():
    images = torch.randn(2, 3, 8, 10)
    plain = conv(images).softmax(1)
    mirrored = conv(images.flip(-1)).flip(-1).softmax(1)  # by hand: mirror, infer, mirror back
    expected = ((plain + mirrored) / 2).log()
    torch.testing.assert_close(tta_scores(conv, images, flip=True), expected)
    assert not torch.allclose(plain, mirrored)  # the flip does change something


def test_scales_resize_the_input_and_the_logits_back():
    images = torch.randn(1, 3, 8, 12)
    half = F.interpolate(images, size=(4, 6), mode="bilinear", align_corners=False)
    back = F.interpolate(conv(half), size=(8, 12), mode="bilinear", align_corners=False)
    expected = ((conv(images).softmax(1) + back.softmax(1)) / 2).log()
    torch.testing.assert_close(tta_scores(conv, images, scales=[1.0, 0.5]), expected)
    with pytest.raises(ValueError, match="positive"):
        tta_scores(conv, images, scales=[0.0])
