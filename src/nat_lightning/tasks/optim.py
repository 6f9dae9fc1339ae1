"""Optimizer parameter groups and the warmup-cosine schedule used by the paper's recipes."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

_BLOCK = re.compile(r"levels\.(\d+)\.blocks\.(\d+)\.")
_DOWNSAMPLE = re.compile(r"levels\.(\d+)\.downsample\.")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, the rpb tables and layer scales are not decayed (as in the paper's code)."""
    return param.ndim <= 1 or name.endswith(("rpb", "gamma1", "gamma2"))


def layer_id(name: str, depths: list[int]) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 = stem, 1..L = blocks, L+1 = norm/head."""
    if "patch_embed." in name:
        return 0
    if match := _BLOCK.search(name):
        level, block = int(match[1]), int(match[2])
        return 1 + sum(depths[:level]) + block
    if match := _DOWNSAMPLE.search(name):
        return sum(depths[: int(match[1]) + 1])  # with the last block of its level
    return sum(depths) + 1


def param_groups(model: nn.Module, weight_decay: float, depths: list[int], layer_decay: float | None = None):
    """AdamW parameter groups: decay / no decay, each scaled by ``layer_decay ** (L+1 - depth)``.

    Every parameter is listed, trainable or not, so that unfreezing later needs no new groups.
    """
    top = sum(depths) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        depth = layer_id(name, depths) if layer_decay is not None else top
        skip = no_weight_decay(name, param)
        group = groups.setdefault(
            (depth, skip),
            {
                "params": [],
                "weight_decay": 0.0 if skip else weight_decay,
                "lr_scale": (layer_decay or 1.0) ** (top - depth),
            },
        )
        group["params"].append(param)
    return list(groups.values())


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Linear warmup from 0, then cosine down to ``min_lr_ratio``; step it every optimizer step.

    Each group's LR is its ``lr_scale`` (layer decay) times the base LR times this factor.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    lambdas = [lambda step, s=g.get("lr_scale", 1.0): s * factor(step) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
