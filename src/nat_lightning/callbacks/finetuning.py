"""Freeze the backbone for linear probing, or for the first epochs of a fine-tune."""

from __future__ import annotations

from lightning.pytorch.callbacks import BaseFinetuning


class BackboneFreeze(BaseFinetuning):
    """Keeps ``pl_module.backbone`` frozen until ``unfreeze_at_epoch`` (never, when None).

    Unlike Lightning's ``BackboneFinetuning`` it adds no optimizer group on unfreezing: the
    classifier's optimizer already holds every parameter (frozen ones simply get no gradient),
    so weight-decay groups, layer-wise LR decay and the LR schedule apply to the backbone as
    soon as it thaws. A run resumed after the thaw epoch is unfrozen again on its first epoch.
    """

    def __init__(self, unfreeze_at_epoch: int | None = None):
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        if self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch:
            self.make_trainable(pl_module.backbone)
