"""Optimizer parameter groups and the LR schedules of the papers' recipes: warmup then cosine
(classification), warmup then poly (segmentation)."""

from __future__ import annotations

import math

import torch
from torch import nn


def owned_parameters(model: nn.Module):
    """``(full name, parameter)`` of every parameter once, in the order of
    ``model.named_parameters()``; FSDP's flattened parameters are refused."""
    for name, param in model.named_parameters():
        if getattr(param, "_is_flat_param", False):
            raise ValueError(
                f"parameter {name!r} is FSDP's flattened parameter (use_orig_params=False), which "
                "mixes weights that are decayed with ones that are not: expected "
                "use_orig_params=True (FSDPStrategy's default)"
            )
        yield name, param


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    lr_mults: dict[str, float] | None = None,
):
    """AdamW parameter groups: decay / no decay, each scaled by ``layer_decay ** (top - layer)``.

    The model declares both: ``model.layer_ids()`` gives every parameter's layer (0 the stem, the
    largest id its top: head, final norms) and ``model.no_weight_decay()`` the names kept out of
    weight decay; a parameter without a layer id is an error, not a silent top layer.
    ``lr_mults`` multiplies the LR of the parameters whose name starts with a prefix (e.g.
    ``{"backbone.": 0.1}``; the first matching prefix wins). Every parameter is listed, trainable
    or not, so that unfreezing later needs no new groups.
    """
    ids, no_decay = model.layer_ids(), model.no_weight_decay()
    top = max(ids.values())
    groups: dict[tuple[int, bool, float], dict] = {}
    for name, param in owned_parameters(model):
        if name not in ids:
            raise ValueError(
                f"parameter {name!r} has no layer id: {type(model).__name__}.layer_ids() must "
                "list every parameter (layer-wise LR decay would otherwise guess its depth)"
            )
        layer = ids[name] if layer_decay is not None else top
        skip = name in no_decay
        mult = next((m for p, m in (lr_mults or {}).items() if name.startswith(p)), 1.0)
        group = groups.setdefault(
            (layer, skip, mult),
            {
                "params": [],
                "weight_decay": 0.0 if skip else weight_decay,
                "lr_scale": mult * (layer_decay or 1.0) ** (top - layer),
            },
        )
        group["params"].append(param)
    return list(groups.values())


def backbone_param_groups(
    network: nn.Module, weight_decay: float, layer_decay: float | None, backbone_lr_mult: float
):
    """``param_groups`` of a dense network whose ``backbone.*`` parameters train at
    ``backbone_lr_mult`` times the heads' LR (the segmentation recipes')."""
    mults = {"backbone.": backbone_lr_mult} if backbone_lr_mult != 1.0 else None
    return param_groups(network, weight_decay, layer_decay, mults)


def schedule_length(
    trainer, warmup_epochs: float, warmup_steps: int | None = None
) -> tuple[int, int]:
    """(warmup, total) optimizer steps of this fit, from the Trainer: ``max_steps`` or
    ``max_epochs``, gradient accumulation and the per-process share of the data under DDP."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError(
            "the training data has no length (an unsized stream), so the LR schedule cannot be "
            "sized from max_epochs: set trainer.max_steps (and model.warmup_steps)"
        )
    total = int(total)
    if warmup_steps is not None:
        return min(warmup_steps, total), total
    if trainer.train_dataloader is None:  # max_epochs=-1: Lightning sized the run without the data
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError(
            f"warmup_epochs={warmup_epochs} needs the length of an epoch, which an unsized stream "
            "does not have: give model.warmup_steps instead"
        )
    per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    return min(round(warmup_epochs * per_epoch), total), total


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Linear warmup from 0, then cosine down to ``min_lr_ratio``; step it every optimizer step.

    Each group's LR is its ``lr_scale`` (layer decay) times the base LR times this factor.
    """

    def cosine(progress: float) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return warmup_then(optimizer, warmup_steps, total_steps, cosine)


def warmup_poly(
    optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0, power: float = 1.0
):
    """Linear warmup from 0, then ``(1 - progress) ** power`` down to ``min_lr_ratio`` (mmseg's
    poly, as the segmentation recipes use it); step it every optimizer step.

    The decay runs over the steps after the warmup. mmcv's poly counts its progress from step 0
    and multiplies the warmup on top; at the recipes' 1500 of 160k warmup steps the two differ
    by under 1%.
    """

    def poly(progress: float) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress) ** power

    return warmup_then(optimizer, warmup_steps, total_steps, poly)


def warmup_steps_decay(
    optimizer, warmup_steps: int, total_steps: int, milestones, gamma: float = 0.1
):
    """Linear warmup from 0, then the LR times ``gamma`` at each milestone passed (fractions
    of training, detectron2's WarmupMultiStepLR as Mask2Former's COCO recipes use it)."""

    def steps(progress: float) -> float:
        return gamma ** sum(progress >= m for m in milestones)

    return warmup_then(optimizer, warmup_steps, total_steps, steps)


def warmup_then(optimizer, warmup_steps: int, total_steps: int, decay):
    """A LambdaLR: linear warmup from 0 over ``warmup_steps``, then ``decay(progress)`` with
    progress going from 0 to 1 over the remaining steps (and staying at 1 past them).

    Each group's LR is its ``lr_scale`` (layer decay, LR multipliers) times the base LR times
    this factor.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    def scaled(scale: float):
        return lambda step: scale * factor(step)

    lambdas = [scaled(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
