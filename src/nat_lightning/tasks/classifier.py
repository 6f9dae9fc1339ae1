"""NatClassifier: image classification with NAT/DiNAT as a LightningModule.

It holds the network, the loss, the metrics and the optimizer set-up; data, paths and batch
sizes belong to the DataModule. What it shares with NatSegmenter (classes from the data,
preprocessing, optimiser groups, the schedule's sizing, finetuning, EMA, the default data) is in
``tasks.base.NatTask``. Without ``num_classes`` the classes are the attached
datamodule's; with no data at all it trains on the embedded digits dataset.

Where the project communicates under DDP (every call is made by every rank, in the same order):
DDP's gradient all-reduce; the val/test metrics, gathered when Lightning computes them at the
epoch's end on every rank (each rank logs all of them on every batch, empty ones included), and
the per-class accuracy computed in ``on_*_epoch_end``; SkippedImagesReport's one all-reduce per
stage (its broadcasts only past the limit, a decision taken on the reduced counts);
ModelCheckpoint's broadcast and save barrier; PredictionWriter's one all_gather_object. Nothing
that only rank 0 runs communicates: train/acc1, which the rank-0 progress bar computes at the
epoch's end, is each rank's own (``sync_on_compute=False``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.wrappers import ClasswiseWrapper

from ..batch import IGNORE_LABEL
from ..files import write_atomically
from ..models import NatConfig, NatForImageClassification
from ..processor_config import data_settings, preprocessor_config
from . import multi_label as ml
from .base import ModelCard, NatTask, meta_training_flops
from .class_weights import counted_pos_weights
from .inference import check_crops, classification_scores
from .mixup import MixupCutmix
from .network import build_network, with_classes
from .optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)

PER_CLASS_LIMIT = 100  # per-class accuracy is logged by default up to this many classes
# transformers' config.json value that makes its pipeline apply a sigmoid per class
MULTI_LABEL_PROBLEM = "multi_label_classification"


class NatClassifier(NatTask):
    monitor = "val/acc1"
    checkpoint_filename = "epoch{epoch:03d}-acc{val/acc1:.4f}"
    data_class = "nat_lightning.HFImageDataModule"
    writer_class = "nat_lightning.callbacks.prediction_writer.PredictionWriter"
    pictures = "classes"  # validation_step returns logits and labels
    card = ModelCard(
        embedded="the embedded 8x8 digits",
        tags="image-classification",
        pipeline="image-classification",
        title="{kind} image classifier",
        ours="NatForImageClassification",
        theirs="AutoModelForImageClassification",
    )

    def __init__(
        self,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        predict_top_k: int = 5,
        log_per_class: bool | None = None,
        tta_flip: bool = False,
        tta_crops: int = 1,
        multi_label: bool | None = None,
        threshold: float = 0.5,
        **kwargs,
    ):
        """An image classifier; the arguments every task takes are NatTask's.

        Args:
            label_smoothing: label smoothing of the cross-entropy.
            mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables it.
            cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 disables it.
            mixup_prob: probability that a batch is mixed at all.
            mixup_switch_prob: probability of cutmix rather than mixup when both are enabled.
            predict_top_k: how many classes ``predict_step`` returns per image.
            log_per_class: log each class's accuracy (``val/acc_class/<name>``); None: up to
                PER_CLASS_LIMIT classes.
            tta_flip: test-time augmentation in validate, test and predict: add the horizontal
                mirror of every view; the views' softmax is averaged (training is unchanged).
            tta_crops: views per image: 1 (the image) or 5 (the image and its four corner crops of
                0.875 of each side, resized back); see tasks.inference.classification_scores.
            multi_label: a set of classes per image: a sigmoid per class, binary cross-entropy
                (``class_weights`` its pos_weight), ``val/map`` monitored (tasks.multi_label).
                None: the data's (a label column holding a list per image), else single-label.
            threshold: with multi_label, the probability from which a class is predicted (F1,
                predict's label sets).
            kwargs: the arguments every task takes (model, pretrained, num_classes, id2label,
                preprocessing, attention_backend, drop_path_rate, lr, weight_decay, betas,
                layer_decay, warmup_epochs, warmup_steps, min_lr, rescale_schedule, finetune,
                unfreeze_at_epoch, ema_decay, compile, class_weights): see NatTask.
        """
        check_crops(tta_crops)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold={threshold}: expected a probability in (0, 1)")
        super().__init__(**kwargs)

    @property
    def multi_label(self) -> bool:
        return bool(self.hparams.multi_label)

    def _build_network(self) -> NatForImageClassification:
        hp = self.hparams
        if hp.num_classes is not None or hp.id2label is not None:
            given = (
                f"num_classes={hp.num_classes}"
                if hp.num_classes is not None
                else f"id2label={hp.id2label}"
            )
            check_class_count(
                hp.num_classes if hp.num_classes is not None else len(hp.id2label), given
            )
        return build_network(
            hp.model,
            hp.pretrained,
            hp.num_classes,
            hp.id2label,
            hp.drop_path_rate,
            hp.attention_backend,
        )

    def _use_network(self, network: NatForImageClassification) -> None:
        """Adopt ``network`` and build what depends on its classes; checkpoints carry the
        resolved network config, not a pointer to re-download weights from."""
        hp = self.hparams
        self.network = network
        self.id2label = {int(k): str(v) for k, v in network.config.id2label.items()}
        self.num_classes = len(self.id2label)
        self.hparams.update(
            model=network.config.to_dict(),
            pretrained=None,
            num_classes=self.num_classes,
            id2label=self.id2label,
            preprocessing=self.preprocessing,
        )
        self.mixup = MixupCutmix(
            self.num_classes,
            hp.mixup_alpha,
            hp.cutmix_alpha,
            hp.mixup_prob,
            hp.mixup_switch_prob,
            hp.label_smoothing,
        )
        # train/acc1 (train/f1_micro) is this rank's running accuracy: computing it needs no
        # collective, and rank-0-only readers (the progress bar at the epoch's end) do compute it.
        # val/test metrics are exact over all ranks (computed where every rank computes them).
        if self.multi_label:
            self.monitor, self.checkpoint_filename = ml.MONITOR, ml.CHECKPOINT_FILENAME
            self.pictures = "label_sets"  # samples titled with sets (ValidationPictures)
            train = {"f1_micro": ml.training_metric(self.num_classes, hp.threshold)}
        else:
            train = {
                "acc1": MulticlassAccuracy(
                    self.num_classes,
                    top_k=1,
                    average="micro",
                    ignore_index=IGNORE_LABEL,
                    sync_on_compute=False,
                )
            }
        self.train_metrics = torch.nn.ModuleDict(train)
        self.val_metrics, self.test_metrics = (self._stage_metrics() for _ in range(2))

    def _stage_metrics(self) -> torch.nn.ModuleDict:
        n = self.num_classes
        if self.multi_label:
            return torch.nn.ModuleDict(ml.stage_metrics(n, self.hparams.threshold))
        metrics = {
            "loss": MeanMetric(),
            "acc1": MulticlassAccuracy(n, top_k=1, average="micro", ignore_index=IGNORE_LABEL),
        }
        if n >= 5:
            metrics["acc5"] = MulticlassAccuracy(
                n, top_k=5, average="micro", ignore_index=IGNORE_LABEL
            )
        if self._per_class:
            labels = [self.id2label.get(i, str(i)) for i in range(n)]
            metrics["per_class"] = ClasswiseWrapper(
                MulticlassAccuracy(n, average=None, ignore_index=IGNORE_LABEL),
                labels=labels,
                prefix="acc_class/",
            )
        return torch.nn.ModuleDict(metrics)

    @property
    def _per_class(self) -> bool:
        per_class = self.hparams.log_per_class
        return per_class or (per_class is None and self.num_classes <= PER_CLASS_LIMIT)

    @property
    def backbone(self) -> torch.nn.Module:
        """The feature extractor (everything but the head): what finetuning freezes."""
        return self.network.nat

    @property
    def backbone_config(self) -> NatConfig:
        return self.network.config

    def preprocessor_config(self, checkpoint: dict) -> dict:
        return preprocessor_config(checkpoint)

    def export_image_size(self, checkpoint: dict) -> int:
        return data_settings(checkpoint)[0]

    def save_pretrained(self, directory) -> None:
        """transformers' layout; a multi-label classifier's config.json says so
        (``problem_type``), so that transformers' pipeline applies a sigmoid, not a softmax."""
        super().save_pretrained(directory)
        if self.multi_label:
            path = Path(directory) / "config.json"
            config = {**json.loads(path.read_text()), "problem_type": MULTI_LABEL_PROBLEM}
            write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values).logits

    def infer(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Evaluation scores (B, K): the logits, or with ``tta_flip``/``tta_crops`` the log of the
        views' mean softmax (the logit of their mean sigmoid for multi-label;
        classification_scores)."""
        hp = self.hparams
        return classification_scores(
            self, pixel_values, hp.tta_flip, hp.tta_crops, multi_label=self.multi_label
        )

    # -- the classes and preprocessing of the attached data ------------------------------------

    def configure_model(self) -> None:
        """Turn multi-label when the data's labels are sets and ``multi_label`` was left unset;
        then the shared set-up (NatTask.configure_model)."""
        if self._trainer is not None and self.trainer.state.fn != "predict":
            self._follow_label_kind(self.trainer.datamodule)
        super().configure_model()

    def _follow_label_kind(self, data) -> None:
        if not getattr(data, "multi_label", False) or self.multi_label:
            return  # single-label data trains a multi-label model as one-class sets
        if self.hparams.multi_label is False:
            column = getattr(getattr(data, "columns", None), "label", None)
            raise ValueError(
                f"multi_label=False, but the data's label column {column!r} holds a set of "
                "classes per image; leave multi_label unset to train on the sets, or pass "
                "--data.label_sets false to read each list as exactly one class"
            )
        self.hparams.multi_label = True
        self._use_network(self.network)

    def monitored(self, data) -> tuple[str, str]:
        """(the metric the best checkpoints are kept by, their file name) for a fit on ``data``:
        ``val/map`` for multi-label, else the class's ``monitor``. BestCheckpoint asks before
        the model has seen the data (its ``setup`` runs first)."""
        if self.multi_label or (
            self.hparams.multi_label is None and getattr(data, "multi_label", False)
        ):
            return ml.MONITOR, ml.CHECKPOINT_FILENAME
        return type(self).monitor, type(self).checkpoint_filename

    def _counted_class_weights(self, data) -> torch.Tensor:
        if self.multi_label:
            return counted_pos_weights(data, self.id2label)
        return super()._counted_class_weights(data)

    def _adopt_classes(self, id2label: dict[int, str]) -> None:
        check_class_count(len(id2label), f"the data's classes {list(id2label.values())[:5]}")
        self._use_network(with_classes(self.network, id2label))

    def _configure_network(self, data) -> None:
        if getattr(data, "image_size", None) and not self.hparams.compile:
            # the model summary counts FLOPs on it; a batch-shaped dict passes the data's hooks
            size = data.image_size
            self.example_input_array = {"pixel_values": torch.zeros(1, 3, size, size)}

    def _training_flops(self, shape: tuple[int, ...]) -> int:
        return measure_training_flops(self.network.config, shape)

    # -- steps ---------------------------------------------------------------------------------

    def _training_loss(self, batch):
        images, labels = batch["pixel_values"], batch["labels"]
        if self.multi_label:
            return self._multi_label_loss(images, ml.label_rows(labels, self.num_classes))
        if self.mixup.active or self.class_weights is not None:
            images, targets = self.mixup(images, labels)  # smoothed (and mixed when active)
            logits = self(images)
            loss = soft_cross_entropy(logits, targets, labels, self.class_weights)
        else:
            logits = self(images)
            loss = self._cross_entropy(logits, labels, self.hparams.label_smoothing)
        self._log_training(loss, logits, labels, "acc1")
        return loss

    def _multi_label_loss(self, images, rows):
        """Binary cross-entropy of smoothed (and mixed) 0/1 rows, class_weights as pos_weight."""
        images, targets = self.mixup(images, rows, ml.smoothed(rows, self.hparams.label_smoothing))
        logits = self(images)
        loss = ml.multi_label_loss(logits, targets, rows, self.class_weights)
        self._log_training(loss, logits.sigmoid(), rows, "f1_micro")
        return loss

    def _log_training(self, loss, predictions, labels, name: str) -> None:
        self.train_metrics[name](predictions, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log(
            f"train/{name}",
            self.train_metrics[name],
            on_step=False,
            on_epoch=True,
            batch_size=len(labels),
        )

    def _evaluate(self, stage: str, batch) -> dict:
        """Logs the same metrics on every rank and batch, a batch of undecodable images
        included, so that every rank computes, and gathers, the same metrics at the epoch's end."""
        labels = batch["labels"]
        if len(labels):
            logits = self.infer(batch["pixel_values"])
        else:
            logits = torch.zeros(0, self.num_classes, device=labels.device)
        if self.multi_label:
            labels = ml.label_rows(labels, self.num_classes)
            labelled, loss = ml.labelled(labels).sum(), ml.multi_label_loss(logits, labels, labels)
            shown, predictions = "f1_micro", logits.sigmoid()
        else:
            labelled, loss = (labels != IGNORE_LABEL).sum(), self._cross_entropy(logits, labels)
            shown, predictions = "acc1", logits
        metrics = getattr(self, f"{stage}_metrics")
        # the loss is a mean over labelled examples of all ranks, weighted exactly (a mean of the
        # ranks' means is not, with uneven ranks or padding rows)
        metrics["loss"].update(loss, weight=labelled)
        for name, metric in metrics.items():
            if name != "loss" and len(labels):  # torchmetrics cannot take an empty update
                metric.update(predictions, labels)
            if name not in ("per_class", *ml.EPOCH_METRICS):
                self.log(
                    f"{stage}/{name}",
                    metric,
                    prog_bar=stage == "val" and name in ("loss", shown),
                    batch_size=len(labels),
                )
        return {"logits": logits.detach(), "labels": labels}  # for ValidationPictures

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        if self.multi_label:  # every rank updated them (_evaluate): compute() gathers
            names = [self.id2label.get(i, str(i)) for i in range(self.num_classes)]
            values = ml.epoch_values(metrics, names, self._per_class)
            for name, value in values.items():  # equal on all ranks
                self.log(
                    f"{stage}/{name}",
                    value,
                    sync_dist=True,
                    reduce_fx="max",
                    prog_bar=stage == "val" and name == "map",
                )
            return
        metric = metrics["per_class"] if "per_class" in metrics else None  # noqa: SIM401 (ModuleDict has no get)
        if metric is None:  # every rank updated it (_evaluate): compute() gathers on all of them
            return
        for name, acc in metric.compute().items():  # compute() gathers every rank's counts
            self.log(f"{stage}/{name}", acc, sync_dist=True, reduce_fx="max")  # equal on all ranks
        metric.reset()

    @staticmethod
    def _cross_entropy(logits, labels, label_smoothing: float = 0.0):
        """Mean over the labelled examples; 0 (with a graph) for a batch of padding only. No
        host sync: the count stays on the device."""
        total = F.cross_entropy(
            logits.float(),
            labels,
            label_smoothing=label_smoothing,
            ignore_index=IGNORE_LABEL,
            reduction="sum",
        )
        return total / (labels != IGNORE_LABEL).sum().clamp(min=1)

    def _predict(self, batch) -> dict:
        """Top-k class ids (``top_ids``), label names (``top_labels``) and probabilities
        (``top_probs``) of every decoded image; for multi-label the classes at or above
        ``threshold`` instead, most probable first, and every class's probability (``scores``
        (n, K), ``class_names``)."""
        if self.multi_label:
            return self._predict_sets(batch["pixel_values"])
        k = min(self.hparams.predict_top_k, self.num_classes)
        if len(batch["pixel_values"]):
            probs = self.infer(batch["pixel_values"]).float().softmax(-1)
            top_probs, top_ids = probs.topk(k, dim=-1)
        else:
            top_probs, top_ids = torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        return {
            "top_ids": top_ids.cpu(),
            "top_labels": [[self.id2label.get(i, str(i)) for i in row] for row in top_ids.tolist()],
            "top_probs": top_probs.cpu(),
        }

    def _predict_sets(self, images: torch.Tensor) -> dict:
        if len(images):
            probs = self.infer(images).float().sigmoid().cpu()
        else:
            probs = torch.zeros(0, self.num_classes)
        ids, names, values = ml.predicted_sets(probs, self.hparams.threshold, self.id2label)
        return {
            "top_ids": ids,
            "top_labels": names,
            "top_probs": values,
            "scores": probs,
            "class_names": [self.id2label.get(i, str(i)) for i in range(self.num_classes)],
        }

    # -- optimisation --------------------------------------------------------------------------

    def _param_groups(self) -> list[dict]:
        hp = self.hparams
        return param_groups(self.network, hp.weight_decay, hp.layer_decay)

    def _lr_scheduler(self, optimizer, warmup_steps: int, total_steps: int):
        return warmup_cosine(
            optimizer, warmup_steps, total_steps, self.hparams.min_lr / self.hparams.lr
        )


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against soft targets (B, K) (smoothed, mixed). Unweighted: the mean over the
    labelled examples. With class ``weights`` each example's loss counts ``targets @ weights``
    times, its target's weight (``weights[y]`` for a plain label; smoothing and mixup mix the
    weights as they mix the targets), and the sum is divided by the sum of those weights, as
    ``F.cross_entropy(weight=...)`` does for plain labels. Padding rows (IGNORE_LABEL) have
    all-zero targets: no loss and no weight."""
    per_image = torch.sum(-targets * logits.float().log_softmax(-1), dim=-1)
    if weights is None:
        return per_image.sum() / (labels != IGNORE_LABEL).sum().clamp(min=1)
    per_weight = targets @ weights.float()
    total = per_weight.sum().clamp(min=torch.finfo(torch.float32).tiny)
    return (per_image * per_weight).sum() / total


def measure_training_flops(config: NatConfig, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward+backward at ``shape``, counted on the meta device (no compute)."""
    return meta_training_flops(
        NatForImageClassification, config.replace(attention_backend="torch"), shape
    )


def check_class_count(n: int, given: str) -> None:
    """A softmax over one class always says yes: a classifier needs two or more."""
    if n < 2:
        raise ValueError(
            f"{given}: a classifier needs at least 2 classes, got {n}; for one yes/no question "
            "use two classes (num_classes=2, e.g. id2label={0: 'no', 1: 'yes'}); several "
            "independent yes/no labels per image are multi-label classification, which "
            "NatClassifier reads from a label column holding a list per image (multi_label)"
        )
