"""NatClassifier: image classification with NAT/DiNAT as a LightningModule.

It holds the network, the loss, the metrics and the optimizer set-up; data, paths and batch
sizes belong to the DataModule. With no DataModule it trains on the embedded digits dataset.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import EMAWeightAveraging
from torchmetrics.classification import MulticlassAccuracy

from ..callbacks.finetuning import BackboneFreeze
from ..callbacks.rng_state import RNGState
from ..callbacks.skipped_images import SkippedImagesReport
from ..models import NatConfig, NatForImageClassification
from .mixup import MixupCutmix
from .optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # labels of padding examples (e.g. streaming DDP); no loss, no metrics
DEFAULT_NUM_CLASSES = 10  # the embedded digits dataset, used when nothing else says otherwise


class NatClassifier(L.LightningModule):
    def __init__(
        self,
        model: str | NatConfig | dict[str, Any] = "nat_pico",
        pretrained: str | None = None,
        num_classes: int | None = None,
        id2label: dict[int, str] | None = None,
        attention_backend: str = "auto",
        drop_path_rate: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = None,
        warmup_epochs: float = 1.0,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        finetune: Literal["full", "linear_probe", "freeze_backbone"] = "full",
        unfreeze_at_epoch: int = 1,
        ema_decay: float | None = None,
        compile: bool = False,
        predict_top_k: int = 5,
    ):
        """Args:
        model: a variant name (``nat_mini``, ``dinat_tiny``, ...), a NatConfig, or its dict.
        pretrained: a transformers-layout folder or Hub id (e.g. shi-labs/nat-mini-in1k-224),
            or an original SHI-Labs ``.pth`` read with ``model`` as its config.
        num_classes: classes of the head; a different count than the checkpoint's gets a new head.
        id2label: class names by id; kept in checkpoints and exported configs.
        attention_backend: ``auto``, ``torch``, ``natten`` or ``reference`` (see nat_lightning.ops).
        drop_path_rate: stochastic depth rate; None keeps the model config's.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not on norms, biases, rpb and layer scales).
        betas: AdamW betas.
        layer_decay: layer-wise LR decay factor (e.g. 0.75 for fine-tuning); None disables it.
        warmup_epochs: linear warmup length in epochs (fractions allowed); cosine afterwards.
        min_lr: learning rate at the end of the cosine schedule.
        label_smoothing: label smoothing of the cross-entropy.
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables it.
        cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 disables it.
        mixup_prob: probability that a batch is mixed at all.
        mixup_switch_prob: probability of cutmix rather than mixup when both are enabled.
        finetune: ``full``; ``linear_probe`` (backbone frozen); ``freeze_backbone`` until
            ``unfreeze_at_epoch``.
        unfreeze_at_epoch: epoch at which ``freeze_backbone`` thaws the backbone.
        ema_decay: keep an EMA of the weights (Lightning's EMAWeightAveraging) and validate on it.
        compile: ``torch.compile`` the network.
        predict_top_k: how many classes ``predict_step`` returns per image.
        """
        super().__init__()
        self.network = build_network(model, pretrained, num_classes, id2label, drop_path_rate, attention_backend)
        if compile:
            self.network.compile()
        self.id2label = dict(self.network.config.id2label)
        self.num_classes = len(self.id2label)
        self.save_hyperparameters()
        # checkpoints carry the resolved network config, not a pointer to re-download weights from
        self.hparams.update(model=self.network.config.to_dict(), pretrained=None,
                            num_classes=self.num_classes, id2label=self.id2label)
        self.mixup = MixupCutmix(self.num_classes, mixup_alpha, cutmix_alpha, mixup_prob,
                                 mixup_switch_prob, label_smoothing)
        self.train_metrics, self.val_metrics, self.test_metrics = (self._stage_metrics() for _ in range(3))
        self._fallback_data = None
        self.flops_per_batch: int | None = None

    def _stage_metrics(self) -> torch.nn.ModuleDict:
        n = self.num_classes
        metrics = {"acc1": MulticlassAccuracy(n, top_k=1, average="micro", ignore_index=IGNORE_INDEX)}
        if n >= 5:
            metrics["acc5"] = MulticlassAccuracy(n, top_k=5, average="micro", ignore_index=IGNORE_INDEX)
        metrics["per_class"] = MulticlassAccuracy(n, average=None, ignore_index=IGNORE_INDEX)
        return torch.nn.ModuleDict(metrics)

    @property
    def backbone(self) -> torch.nn.Module:
        """The feature extractor (everything but the head): what finetuning freezes."""
        return self.network.nat

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values).logits

    def on_train_batch_start(self, batch, batch_idx):
        if self.flops_per_batch is None:  # read by ImageThroughputMonitor
            self.flops_per_batch = measure_training_flops(self.network.config, tuple(batch["pixel_values"].shape))

    # -- steps ---------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        images, labels = batch["pixel_values"], batch["labels"]
        if self.mixup.active and bool((labels != IGNORE_INDEX).all()):
            images, targets = self.mixup(images, labels)
            logits = self(images)
            loss = torch.sum(-targets * logits.float().log_softmax(-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = self._cross_entropy(logits, labels, self.hparams.label_smoothing)
        self.train_metrics["acc1"](logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/acc1", self.train_metrics["acc1"], on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)

    def _evaluate(self, stage: str, batch) -> None:
        labels = batch["labels"]
        logits = self(batch["pixel_values"])
        self.log(f"{stage}/loss", self._cross_entropy(logits, labels), prog_bar=stage == "val",
                 batch_size=len(labels), sync_dist=True)
        for name, metric in getattr(self, f"{stage}_metrics").items():
            metric.update(logits, labels)
            if name != "per_class":
                self.log(f"{stage}/{name}", metric, prog_bar=name == "acc1", batch_size=len(labels))

    def on_validation_epoch_end(self):
        self._log_per_class("val")

    def on_test_epoch_end(self):
        self._log_per_class("test")

    def _log_per_class(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_metrics")["per_class"]
        if metric.update_count == 0:
            return
        for i, acc in enumerate(metric.compute().tolist()):
            self.log(f"{stage}/acc_class/{self.id2label.get(i, i)}", acc, rank_zero_only=True)
        metric.reset()

    @staticmethod
    def _cross_entropy(logits, labels, label_smoothing: float = 0.0):
        if not bool((labels != IGNORE_INDEX).any()):
            return logits.sum() * 0.0  # a batch of padding only: keep the graph, add nothing
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX)

    def predict_step(self, batch, batch_idx):
        """Top-k class ids, label names and probabilities for every image of the batch."""
        probs = self(batch["pixel_values"]).float().softmax(-1)
        top_probs, top_ids = probs.topk(min(self.hparams.predict_top_k, self.num_classes), dim=-1)
        return {
            "ids": batch.get("ids", list(range(len(probs)))),
            "top_ids": top_ids.cpu(),
            "top_labels": [[self.id2label.get(i, str(i)) for i in row] for row in top_ids.tolist()],
            "top_probs": top_probs.cpu(),
        }

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.network, hp.weight_decay, self.network.config.depths, hp.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = int(round(hp.warmup_epochs * total / epochs))
        scheduler = warmup_cosine(optimizer, warmup, total, hp.min_lr / hp.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self):
        # undecodable-image reports; RNG state in checkpoints for exact resumes
        callbacks = [SkippedImagesReport(), RNGState()]
        if self.hparams.finetune != "full":
            thaw = None if self.hparams.finetune == "linear_probe" else self.hparams.unfreeze_at_epoch
            callbacks.append(BackboneFreeze(unfreeze_at_epoch=thaw))
        if self.hparams.ema_decay is not None:
            callbacks.append(EMAWeightAveraging(decay=self.hparams.ema_decay))
        return callbacks

    # -- checkpoints and export ----------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        head = checkpoint.get("state_dict", {}).get("network.head.weight")
        if head is not None and head.shape[0] != self.num_classes:
            raise ValueError(
                f"the checkpoint's head has {head.shape[0]} classes but num_classes={self.num_classes}; "
                "to fine-tune it on a different label set, pass it as pretrained= instead "
                "(export it with save_pretrained first) so the head is re-initialised"
            )

    def save_pretrained(self, directory) -> None:
        """Write the network in transformers' layout (config.json + model.safetensors)."""
        self.network.save_pretrained(directory)

    # -- the embedded default data, used only when fit() is given none -------------------------

    def _default_data(self):
        if self._fallback_data is None:
            from ..data.digits import quickstart_datamodule

            self._fallback_data = quickstart_datamodule()
            self._fallback_data.setup("fit")
        return self._fallback_data

    def train_dataloader(self):
        return self._default_data().train_dataloader()

    def val_dataloader(self):
        return self._default_data().val_dataloader()


def measure_training_flops(config: NatConfig, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward+backward at ``shape``, counted on the meta device (no compute)."""
    with torch.device("meta"):
        network = NatForImageClassification(config.replace(attention_backend="torch"))
        images = torch.empty(shape)
    return measure_flops(network, lambda: network(images).logits, loss_fn=torch.Tensor.sum)


def build_network(model, pretrained, num_classes, id2label, drop_path_rate, attention_backend):
    """The classifier network from a variant/config and optionally pretrained weights."""
    if isinstance(model, str):
        config = NatConfig.from_variant(model)
    elif isinstance(model, dict):
        config = NatConfig.from_dict(model)
    elif isinstance(model, NatConfig):
        config = model
    else:
        raise ValueError(f"model must be a variant name, a NatConfig or a dict, got {type(model).__name__}")
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in id2label.items()}
        if num_classes is not None and num_classes != len(id2label):
            raise ValueError(f"id2label has {len(id2label)} entries but num_classes={num_classes}")
        num_classes = len(id2label)
    overrides = {"attention_backend": attention_backend}
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if pretrained is not None:
        network = NatForImageClassification.from_pretrained(
            pretrained, config=config if isinstance(model, (NatConfig, dict)) or pretrained.endswith((".pth", ".pt")) else None,
            num_labels=num_classes, id2label=id2label, **overrides)
        return network
    if num_classes is None:
        explicit = not isinstance(model, str)
        num_classes = config.num_labels if explicit else DEFAULT_NUM_CLASSES
    id2label = id2label or {i: str(i) for i in range(num_classes)}
    return NatForImageClassification(config.replace(num_labels=num_classes, id2label=id2label, **overrides))
