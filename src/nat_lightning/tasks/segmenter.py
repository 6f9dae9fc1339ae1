"""NatSegmenter: semantic segmentation with UPerNet on NAT/DiNAT as a LightningModule.

It holds the network, the metrics, the inference mode and the optimizer set-up; data belongs to
the DataModule (HFSegmentationDataModule). What it shares with NatClassifier (classes from the
data, preprocessing, optimiser groups, the schedule's sizing, finetuning, EMA, the default data)
is in ``tasks.base.NatTask``. Without ``num_classes`` the classes are the attached datamodule's;
with no data at all it trains on the embedded shapes.

Batches: ``pixel_values`` (B, 3, H, W), ``labels`` (B, H, W) with 255 for unlabelled pixels;
evaluation and predict batches are padded (labels 255 there) and carry ``sizes`` and ``content``
(B, 2): each image's original (h, w) and its resized (h, w) before padding.

Under DDP every rank makes the same collective calls: DDP's gradient all-reduce (and
SyncBatchNorm's on GPUs), ``val/loss`` gathered when Lightning computes it at the epoch's end,
and the metrics' counts gathered by ``compute()`` in ``on_*_epoch_end``, which every rank runs
whether or not it had a batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from ..models import NatForSemanticSegmentation
from ..processor_config import segmentation_preprocessor_config
from .base import ModelCard, NatTask, meta_training_flops
from .inference import slide_logits, tta_scores
from .optim import backbone_param_groups, warmup_poly
from .seg_metrics import IGNORE_INDEX, SUPPORT, segmentation_metrics
from .seg_network import HEAD_ARGS, build_segmentation_network, with_classes

STAGE_NAMES = {"val": "validation", "test": "test"}
MAX_NAMED = 30  # absent classes a warning names
PAPER_LR = 6e-5  # the UPerNet recipes' AdamW LR, for fine-tuning pretrained weights
SCRATCH_LR = 1e-3  # the default without pretrained weights (the embedded shapes' tiny model)


class NatSegmenter(NatTask):
    monitor = "val/miou"
    checkpoint_filename = "epoch{epoch:03d}-miou{val/miou:.4f}"
    data_class = "nat_lightning.HFSegmentationDataModule"
    writer_class = "nat_lightning.callbacks.mask_writer.MaskWriter"
    pictures = "masks"  # validation_step returns predicted masks and labels
    card = ModelCard(
        embedded="the embedded shapes",
        tags="image-segmentation, semantic-segmentation, upernet",
        pipeline="image-segmentation",
        title="UPerNet + {kind} semantic segmentation",
        ours="NatForSemanticSegmentation",
        theirs="UperNetForSemanticSegmentation",
    )

    PREPROCESSING_KEYS = ("mean", "std")  # HFSegmentationDataModule's
    HEAD_WEIGHT = "network.decode_head.classifier.weight"

    def __init__(
        self,
        dilations: list[list[int]] | None = None,
        hidden_size: int | None = None,
        pool_scales: tuple[int, ...] | None = None,
        use_auxiliary_head: bool | None = None,
        auxiliary_weight: float | None = None,
        auxiliary_channels: int | None = None,
        auxiliary_num_convs: int | None = None,
        auxiliary_concat_input: bool | None = None,
        lr: float | None = None,
        weight_decay: float = 0.01,
        backbone_lr_mult: float = 1.0,
        min_lr: float = 0.0,
        poly_power: float = 1.0,
        sync_batchnorm: bool = True,
        inference: Literal["whole", "slide"] = "whole",
        window_size: int | None = None,
        window_stride: int | None = None,
        scales: list[float] = [1.0],  # noqa: B006 (a CLI default, never mutated)
        flip: bool = False,
        **kwargs,
    ):
        """UPerNet semantic segmentation; the arguments every task takes are NatTask's.

        Args:
            dilations: DiNAT's dilation of every block, per stage, replacing the model's and the
                pretrained checkpoint's (weights do not depend on it): the segmentation recipes use
                larger ones for 512 px crops than the 224 px classifiers they start from.
            hidden_size: channels of the decode head; None: the pretrained UperNet's, else 512 (64
                for the default tiny model). So are the other head sizes below (None: theirs, else
                UperNetConfig's defaults).
            pool_scales: output sizes of the decode head's pyramid pooling (1, 2, 3, 6).
            use_auxiliary_head: train an FCN head on stage 3 as well (True).
            auxiliary_weight: weight of the auxiliary head's loss (0.4).
            auxiliary_channels: channels of the auxiliary head (256; 32 for the default tiny model).
            auxiliary_num_convs: 3x3 conv blocks of the auxiliary head (1).
            auxiliary_concat_input: auxiliary head: concat its input before the classifier (False).
            lr: peak learning rate of AdamW; None: PAPER_LR (6e-5) with pretrained weights, else
                SCRATCH_LR (1e-3).
            weight_decay: AdamW weight decay (not on norms, biases, rpb and layer scales).
            backbone_lr_mult: the backbone's LR relative to the heads' (e.g. 0.1).
            min_lr: learning rate at the end of the poly schedule.
            poly_power: power of the poly decay (1.0: linear).
            sync_batchnorm: under several GPU processes, normalise the heads' BatchNorms with the
                statistics of the global batch (SyncBatchNorm); Trainer(sync_batchnorm=True) is not
                needed. CPU processes cannot sync them (torch supports GPUs only) and keep their own.
            inference: ``whole`` image, or ``slide``: windows of ``window_size`` every ``window_stride``
                pixels, their logits averaged where they overlap (mmseg's slide_inference).
            window_size: window side for ``slide``; None: the datamodule's crop_size.
            window_stride: window step for ``slide``; None: two thirds of window_size (mmseg's 341
                for 512).
            scales: test-time scales; several, or ``flip``, average the views' softmax.
            flip: add horizontally flipped views at test time.
            kwargs: the arguments every task takes (model: the backbone; pretrained, num_classes,
                id2label, preprocessing: ``mean`` and ``std``, attention_backend, drop_path_rate,
                betas, layer_decay, warmup_epochs, warmup_steps: the recipes' 1500,
                rescale_schedule, finetune, unfreeze_at_epoch, ema_decay, compile, class_weights:
                per-class weights of the decode and auxiliary cross-entropies): see NatTask.
        """
        super().__init__(lr=lr, weight_decay=weight_decay, min_lr=min_lr, **kwargs)
        if lr is None:
            self.hparams.lr = PAPER_LR if self._pretrained_given else SCRATCH_LR
        self._warned_absent: set[str] = set()  # stages whose absent classes were named

    def _build_network(self) -> NatForSemanticSegmentation:
        hp = self.hparams
        given = {arg: hp[arg] for arg in HEAD_ARGS}
        head = {HEAD_ARGS[k]: v for k, v in given.items() if v is not None}
        overrides = {"attention_backend": hp.attention_backend}
        if hp.drop_path_rate is not None:
            overrides["drop_path_rate"] = hp.drop_path_rate
        if hp.dilations is not None:
            overrides["dilations"] = hp.dilations
        self._pretrained_given = hp.pretrained is not None  # (hparams.pretrained is reset)
        return build_segmentation_network(
            hp.model, hp.pretrained, hp.num_classes, hp.id2label, head, overrides
        )

    def _use_network(self, network: NatForSemanticSegmentation) -> None:
        """Adopt ``network`` and build what depends on its classes; checkpoints carry the
        resolved config (backbone, heads, classes), not a pointer to the pretrained weights."""
        config = network.config
        family = "Nat" if config.backbone.model_type == "nat" else "Dinat"
        self.network = network
        self.id2label = {int(k): str(v) for k, v in config.id2label.items()}
        self.num_classes = len(self.id2label)
        self.hparams.update(
            model=config.backbone.to_dict(architectures=[f"{family}Backbone"]),
            pretrained=None,
            num_classes=self.num_classes,
            id2label=self.id2label,
            preprocessing=self.preprocessing,
            **{arg: getattr(config, field) for arg, field in HEAD_ARGS.items()},
        )
        self.hparams.pool_scales = list(config.pool_scales)
        metrics = segmentation_metrics(self.id2label)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.losses = torch.nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def _adopt_classes(self, id2label: dict[int, str]) -> None:
        self._use_network(with_classes(self.network, id2label))

    @property
    def backbone(self) -> torch.nn.Module:
        """The feature extractor: what finetuning freezes."""
        return self.network.backbone

    @property
    def backbone_config(self):
        return self.network.config.backbone

    def preprocessor_config(self, checkpoint: dict) -> dict:
        return segmentation_preprocessor_config(self, checkpoint)

    def export_image_size(self, checkpoint: dict) -> int:
        return self.preprocessor_config(checkpoint)["size"]["shortest_edge"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Whole-image logits (B, num_classes, H, W)."""
        return self.network(pixel_values).logits

    def _configure_network(self, data) -> None:
        """SyncBatchNorm when several GPU processes train (before DDP wraps the model)."""
        if not (self.hparams.sync_batchnorm and self.trainer.world_size > 1):
            return
        plain = any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, torch.nn.SyncBatchNorm)
            for m in self.network.modules()
        )
        if not plain:
            return
        if self.trainer.strategy.root_device.type == "cpu":
            rank_zero_warn(
                "sync_batchnorm: SyncBatchNorm runs on GPUs only, so each CPU process normalises "
                "the heads' BatchNorms with the statistics of its own batch"
            )
            return
        self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)

    def _training_flops(self, shape: tuple[int, ...]) -> int:
        config = self.network.config
        config = config.replace(backbone=config.backbone.replace(attention_backend="torch"))
        return meta_training_flops(NatForSemanticSegmentation, config, shape)

    # -- inference -----------------------------------------------------------------------------

    def infer(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Scores (B, K, H, W) by the inference mode: whole-image or sliding-window logits, or,
        with several scales or flip, the log of the views' mean softmax (see tta_scores)."""
        if self.hparams.inference == "slide":
            crop, stride = self._window()

            def single(x):
                return slide_logits(self, x, (crop, crop), (stride, stride))
        else:
            single = self
        return tta_scores(single, pixel_values, self.hparams.scales, self.hparams.flip)

    def _window(self) -> tuple[int, int]:
        data = self._trainer.datamodule if self._trainer is not None else None
        crop = self.hparams.window_size or getattr(data, "crop_size", None)
        if crop is None:
            raise ValueError(
                "inference='slide' needs a window: set window_size (no datamodule gives one)"
            )
        return crop, self.hparams.window_stride or max(1, crop * 2 // 3)

    # -- steps ---------------------------------------------------------------------------------

    def _training_loss(self, batch):
        out = self.network(batch["pixel_values"], batch["labels"], self.class_weights)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=len(batch["labels"]))
        return out.loss

    def _evaluate(self, stage: str, batch) -> dict:
        """Logs the loss on every rank and batch, a batch of undecodable images included, so
        that every rank gathers the same at the epoch's end."""
        images, labels = batch["pixel_values"], batch["labels"]
        labelled = (labels != IGNORE_INDEX).sum()
        if len(images):
            scores = self.infer(images)
            loss = F.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            masks = scores.argmax(1)
            getattr(self, f"{stage}_metrics").update(masks, labels)
        else:
            loss, masks = labelled.float(), labels  # 0, and no image
        # a mean over the labelled pixels of all ranks, weighted exactly
        self.losses[stage].update(loss / labelled.clamp(min=1), weight=labelled)
        self.log(
            f"{stage}/loss", self.losses[stage], prog_bar=stage == "val", batch_size=len(images)
        )
        return {"masks": masks, "labels": labels}  # for ValidationPictures

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()  # every rank: gathers every rank's counts
        metrics.reset()
        if not self._check_support(stage, values.pop(f"{stage}/{SUPPORT}")):
            return
        # equal on all ranks: "max" is the value, and logging it as synced keeps Lightning quiet
        miou = values.pop(f"{stage}/miou")
        self.log(f"{stage}/miou", miou, prog_bar=stage == "val", sync_dist=True, reduce_fx="max")
        self.log_dict(values, sync_dist=True, reduce_fx="max")

    def _check_support(self, stage: str, pixels: torch.Tensor) -> bool:
        """Whether the epoch's metrics mean anything, from its labelled pixels per class (every
        rank's): none at all is an error (the loss and mIoU would be NaN), except in the sanity
        check, which reads a few batches and logs nothing. Classes the labels never hold are
        named in one warning per stage and run (their IoU is NaN, or 0 where predicted)."""
        name = STAGE_NAMES[stage]
        if self.trainer.sanity_checking:
            return bool(pixels.any())
        if not pixels.any():
            raise ValueError(
                f"the {name} epoch read no labelled pixel (every label is {IGNORE_INDEX}, "
                f"ignored), so {stage}/loss and {stage}/miou are undefined; check the {name} "
                "data's masks: reduce_labels=True on masks whose 0 is a class, or a color_map "
                f"that matches none of their colours, makes every pixel {IGNORE_INDEX}"
            )
        absent = [self.id2label[i] for i in (pixels == 0).nonzero().flatten().tolist()]
        if absent and stage not in self._warned_absent:
            self._warned_absent.add(stage)
            more = f" and {len(absent) - MAX_NAMED} more" if len(absent) > MAX_NAMED else ""
            rank_zero_warn(
                f"{len(absent)} of {self.num_classes} classes never occur in the {name} labels: "
                f"{absent[:MAX_NAMED]}{more}; their {stage}/iou/<name> is NaN (0 where "
                f"predicted) and {stage}/miou averages the classes that occur or are predicted"
            )
        return True

    def _predict(self, batch) -> dict:
        """``masks``: one (h, w) tensor of class ids per decoded image, in order (uint8 up to
        256 classes, else int32). Each image's scores are cropped to its ``content``, resized
        bilinearly to its ``sizes`` (as mmseg resizes logits), then arg-maxed.
        """
        images = batch["pixel_values"]
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        masks = []
        if len(images):
            scores = self.infer(images)
            full = torch.tensor([images.shape[-2:]] * len(images))
            content, sizes = batch.get("content", full), batch.get("sizes", full)
            for score, (ch, cw), (h, w) in zip(scores, content.tolist(), sizes.tolist()):
                score = score[None, :, :ch, :cw]
                if (h, w) != (ch, cw):
                    score = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)
                masks.append(score[0].argmax(0).to(dtype).cpu())
        return {"masks": masks}

    # -- optimisation --------------------------------------------------------------------------

    def _param_groups(self) -> list[dict]:
        hp = self.hparams
        return backbone_param_groups(
            self.network, hp.weight_decay, hp.layer_decay, hp.backbone_lr_mult
        )

    def _lr_scheduler(self, optimizer, warmup_steps: int, total_steps: int):
        hp = self.hparams
        return warmup_poly(optimizer, warmup_steps, total_steps, hp.min_lr / hp.lr, hp.poly_power)
