"""Freeze the backbone for linear probing, or for the first epochs of a fine-tune."""

from __future__ import annotations

from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import SingleDeviceStrategy


class BackboneFreeze(BaseFinetuning):
    """Keeps ``pl_module.backbone`` from training until ``unfreeze_at_epoch`` (never, when None).

    Unlike Lightning's ``BackboneFinetuning`` it adds no optimizer group on unfreezing: the
    classifier's optimizer already holds every parameter, so weight-decay groups, layer-wise LR
    decay and the LR schedule apply to the backbone as soon as it thaws. A run resumed after the
    thaw epoch is unfrozen again on its first epoch.

    How the backbone is held depends on whether it will thaw, and on the strategy:

    - Never thawed (linear probing), or thawed on a single device: ``requires_grad=False``, so no
      backward runs through the backbone at all. AdamW skips parameters without a gradient.
    - Thawed later under DDP, FSDP or any other strategy that wraps the model: every parameter
      keeps ``requires_grad=True``. Those wrappers register the parameters that require grad
      once, when they wrap the model before training; a backbone thawed by flipping
      ``requires_grad`` afterwards would train on each rank's own gradients, never all-reduced,
      and the ranks' weights would silently drift apart (Lightning issue #20340). Instead the
      backbone's gradients are computed and all-reduced as usual and then dropped
      (``grad = None``) in ``on_before_optimizer_step``, after the all-reduce and before gradient
      clipping and AdamW, until the thaw. AdamW skips a parameter without a gradient: no update,
      no decoupled weight decay, no moments and no step count, so the backbone stays bit for bit
      as it was, and its AdamW state starts at the thaw exactly as on a single device. (A zero
      learning rate would leave the weights alone too, since AdamW decays by ``lr *
      weight_decay``, but it would still fill the moments and the step count with frozen-phase
      gradients that then shape the first updates after the thaw.) The cost: until the thaw a
      step spends the backbone's backward (about twice its forward) and the all-reduce of its
      gradients, as full fine-tuning does; re-wrapping the model at the thaw would avoid that
      but depends on strategy internals, and ``find_unused_parameters``/``static_graph`` do not
      help, because DDP never registers a parameter that did not require grad when it wrapped.
    """

    def __init__(self, unfreeze_at_epoch: int | None = None):
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.drop_gradients = False  # how the backbone is held: dropped gradients or requires_grad
        self.frozen = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning calls this before the strategy wraps the model
        thaws = self.unfreeze_at_epoch is not None
        self.drop_gradients = thaws and not isinstance(trainer.strategy, SingleDeviceStrategy)
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module) -> None:
        self.frozen = True
        if not self.drop_gradients:
            self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        if self.frozen and self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch:
            self.frozen = False
            if not self.drop_gradients:
                self.make_trainable(pl_module.backbone)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.frozen and self.drop_gradients:
            for param in pl_module.backbone.parameters():
                param.grad = None
