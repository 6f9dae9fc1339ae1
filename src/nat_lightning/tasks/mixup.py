"""Batch-level mixup and cutmix with label smoothing, as in timm's ``Mixup`` (no torchvision)."""

from __future__ import annotations

import math

import torch


class MixupCutmix:
    """Mixes a batch with its flip; returns images and soft targets ``(B, num_classes)``.

    With probability ``prob`` a batch is mixed: by cutmix with probability ``switch_prob`` when
    both alphas are positive (otherwise whichever is), else by mixup. Labels are smoothed first.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ):
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={value}")
        for name, value in (
            ("prob", prob),
            ("switch_prob", switch_prob),
            ("label_smoothing", label_smoothing),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {name}={value}")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = (
            num_classes,
            mixup_alpha,
            cutmix_alpha,
        )
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def smooth(self, labels: torch.Tensor) -> torch.Tensor:
        """Smoothed one-hot targets; all zeros for ignored labels (negative, e.g. -100 padding)."""
        off = self.label_smoothing / self.num_classes
        targets = torch.full((labels.numel(), self.num_classes), off, device=labels.device)
        targets.scatter_(1, labels.clamp(min=0)[:, None], 1 - self.label_smoothing + off)
        return targets * (labels >= 0)[:, None]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets=None):
        """``targets``: soft targets (B, K) to mix instead of ``labels`` smoothed (multi-label)."""
        targets = self.smooth(labels) if targets is None else targets
        if not self.active or torch.rand(()).item() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or torch.rand(()).item() < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(
            torch.distributions.Beta(alpha, alpha, validate_args=False).sample()
        )  # host RNG, no checks
        flipped = images.flip(0)
        if use_cutmix:
            images, lam = _paste_box(images, flipped, lam)
        else:
            images = images * lam + flipped * (1 - lam)
        return images, targets * lam + targets.flip(0) * (1 - lam)


def _paste_box(images: torch.Tensor, other: torch.Tensor, lam: float):
    """Paste a random box of area ~(1-lam) from ``other``; return images and the exact lam."""
    height, width = images.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = torch.randint(height, ()).item(), torch.randint(width, ()).item()
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    images = images.clone()
    images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return images, 1 - (y1 - y0) * (x1 - x0) / (height * width)
