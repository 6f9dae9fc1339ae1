"""NatUniversalSegmenter: Mask2Former or OneFormer on NAT/DiNAT as a LightningModule, for
panoptic, instance and semantic segmentation with one network.

The heads, the Hungarian matcher and the losses are transformers' own
(models.universal.NatForUniversalSegmentation); this module trains them with the recipe's AdamW
(backbone LR x0.1, no decay on norms, rpb and embeddings) and a poly schedule with warmup, and
evaluates panoptic quality, mask AP and mIoU at once (tasks.universal_metrics). What it shares
with the other tasks (classes from the data, preprocessing, the schedule's sizing, finetuning,
EMA, the embedded default data) is ``tasks.base.NatTask``; without ``num_classes`` the classes
are the attached datamodule's; with no data at all it trains on the embedded panoptic shapes.

Batches are HFPanopticDataModule's (``mask_labels``, ``class_labels``, ``panoptic_map``,
``labels``; see data.universal). Under DDP each rank matches and normalises its own images'
segments (transformers' loss outside Accelerate), and every rank makes the same collective calls:
DDP's gradient all-reduce, ``val/loss`` gathered at the epoch's end, and the metrics' states
gathered by ``compute()`` in ``on_*_epoch_end``, which every rank runs whether or not it had a
batch.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchmetrics import MeanMetric

from ..models import NatConfig
from ..models.universal import NatForUniversalSegmentation
from ..processor_config import universal_preprocessor_config
from .base import ModelCard, NatTask
from .optim import backbone_param_groups, warmup_poly, warmup_steps_decay
from .seg_metrics import IGNORE_INDEX
from .universal_metrics import UniversalMetrics
from .universal_network import build_universal_network, head_settings, with_classes
from .universal_outputs import (
    instance_segmentation,
    oneformer_instance_segmentation,
    panoptic_segmentation,
    semantic_segmentation,
    things_only,
)
from .universal_tokens import task_tokens

PAPER_LR = 1e-4  # Mask2Former's and OneFormer's AdamW LR (batch 16)
SCRATCH_LR = 1e-3  # the default without pretrained weights (the embedded shapes' tiny model)
TaskType = Literal["panoptic", "instance", "semantic"]
TASK_TYPES = ("panoptic", "instance", "semantic")


class NatUniversalSegmenter(NatTask):
    monitor = "val/pq"
    checkpoint_filename = "epoch{epoch:03d}-pq{val/pq:.4f}"
    data_class = "nat_lightning.HFPanopticDataModule"
    writer_class = "nat_lightning.callbacks.panoptic_writer.PanopticWriter"
    pictures = "masks"  # validation_step returns semantic maps and labels
    MASK2FORMER_CARD = ModelCard(
        embedded="the embedded panoptic shapes",
        tags="image-segmentation, panoptic-segmentation, mask2former",
        pipeline="image-segmentation",
        title="Mask2Former + {kind} universal segmentation",
        ours="NatForUniversalSegmentation",
        theirs="Mask2FormerForUniversalSegmentation",
    )
    ONEFORMER_CARD = ModelCard(
        embedded=MASK2FORMER_CARD.embedded,
        tags="image-segmentation, panoptic-segmentation, oneformer",
        pipeline="image-segmentation",
        title="OneFormer + {kind} universal segmentation",
        ours="NatForUniversalSegmentation",
        theirs="OneFormerForUniversalSegmentation",
    )

    onnx_unsupported = (
        "transformers' multi-scale deformable attention (Mask2Former's and OneFormer's pixel "
        "decoder) traces to a graph whose onnxruntime outputs differ from torch's by ~4e-2"
    )
    PREPROCESSING_KEYS = ("mean", "std")  # HFPanopticDataModule's
    HEAD_WEIGHT = "network.heads.criterion.empty_weight"  # the classes and "no object"
    HEAD_EXTRA_ROWS = 1

    def __init__(
        self,
        architecture: Literal["mask2former", "oneformer"] = "mask2former",
        heads: dict[str, Any] | None = None,
        dilations: list[list[int]] | None = None,
        tokenizer: str | None = None,
        task_token_ids: dict[str, list[int]] | None = None,
        task_type: TaskType = "panoptic",
        stuff_ids: list[int] | None = None,
        threshold: float = 0.8,
        overlap_mask_area_threshold: float = 0.8,
        lr: float | None = None,
        weight_decay: float = 0.05,
        backbone_lr_mult: float = 0.1,
        min_lr: float = 0.0,
        poly_power: float = 0.9,
        lr_steps: list[float] | None = None,
        **kwargs,
    ):
        """Mask2Former/OneFormer universal segmentation; the arguments every task takes are
        NatTask's.

        Args:
            architecture: ``mask2former`` or ``oneformer`` (transformers' heads); a pretrained
                Mask2Former/OneFormer folder must be of this kind.
            heads: head config fields (transformers' Mask2FormerConfig/OneFormerConfig names,
                checked): e.g. ``{num_queries: 100, decoder_layers: 10, train_num_points:
                12544}``. Unset ones are the pretrained network's, else transformers' defaults
                (the papers' heads); the default tiny model has small ones (DEFAULT_HEADS).
            dilations: DiNAT's dilation of every block, per stage, replacing the model's and the
                pretrained checkpoint's (weights do not depend on them).
            tokenizer: OneFormer: a folder or Hub id with the CLIP tokenizer of its task prompt
                ("the task is panoptic"); None: the pretrained folder's.
            task_token_ids: OneFormer: the prompts' token ids by task type; None: read with
                ``tokenizer`` once and recorded, so that a checkpoint needs no tokenizer.
            task_type: what validate's pictures, predict and OneFormer's prompt are:
                ``panoptic``, ``instance`` or ``semantic``. PQ, mask AP and mIoU are all
                computed whatever it is (OneFormer: with its panoptic prompt).
            stuff_ids: the stuff classes (one segment per image: fused in panoptic maps, left
                out of mask AP); None: the datamodule's (``thing_classes``), recorded at fit.
            threshold: least class probability of a panoptic segment (detectron2's Mask2Former
                0.8; transformers' processors 0.5).
            overlap_mask_area_threshold: a query keeps the pixels it wins if they are over this
                share of its own mask.
            lr: peak learning rate of AdamW; None: PAPER_LR (1e-4) with pretrained weights,
                else SCRATCH_LR (1e-3).
            weight_decay: AdamW weight decay (not on norms, biases, rpb, embeddings).
            backbone_lr_mult: the backbone's LR relative to the heads' (the recipes' 0.1).
            min_lr: learning rate at the end of the poly schedule.
            poly_power: power of the poly decay (the recipes' 0.9).
            lr_steps: instead of poly, the fractions of training at which the LR drops to a
                tenth (Mask2Former's COCO recipe: 655556 and 710184 of 737500 iterations).
            kwargs: the arguments every task takes (model: the backbone; pretrained,
                num_classes, id2label, preprocessing: ``mean`` and ``std``, attention_backend,
                drop_path_rate, betas, layer_decay, warmup_epochs, warmup_steps,
                rescale_schedule, finetune, unfreeze_at_epoch, ema_decay, compile): see
                NatTask. ``class_weights`` is not taken: transformers' losses weigh classes by
                ``heads.class_weight`` and ``no_object_weight``.
        """
        if kwargs.get("class_weights") not in (None, "none"):
            raise ValueError(
                f"class_weights={kwargs['class_weights']!r}: the universal segmenter's losses are "
                "transformers' own; weigh them with heads: {class_weight: ..., no_object_weight: "
                "...} instead"
            )
        if lr_steps is not None and not all(0 < f < 1 for f in lr_steps):
            raise ValueError(f"lr_steps={lr_steps}: expected fractions of training in (0, 1)")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold={threshold}: expected a probability in [0, 1)")
        super().__init__(lr=lr, weight_decay=weight_decay, min_lr=min_lr, **kwargs)
        if lr is None:
            self.hparams.lr = PAPER_LR if self._pretrained_given else SCRATCH_LR

    # -- the network -----------------------------------------------------------------------------

    def _build_network(self) -> NatForUniversalSegmentation:
        hp = self.hparams
        overrides = {"attention_backend": hp.attention_backend}
        if hp.drop_path_rate is not None:
            overrides["drop_path_rate"] = hp.drop_path_rate
        if hp.dilations is not None:
            overrides["dilations"] = hp.dilations
        self._pretrained_given = hp.pretrained is not None  # (hparams.pretrained is reset)
        self._tokenizer_source = hp.tokenizer or hp.pretrained
        return build_universal_network(
            hp.model, hp.pretrained, hp.architecture, hp.num_classes, hp.id2label,
            dict(hp.heads or {}), overrides,
        )  # fmt: skip

    def _use_network(self, network: NatForUniversalSegmentation) -> None:
        """Adopt ``network``; checkpoints carry its resolved config (backbone, heads, classes)."""
        backbone = network.backbone.config
        family = "Nat" if backbone.model_type == "nat" else "Dinat"
        self.network = network
        self.id2label = {int(k): str(v) for k, v in network.config.id2label.items()}
        self.num_classes = len(self.id2label)
        self.hparams.update(
            model=backbone.to_dict(architectures=[f"{family}Backbone"]),
            pretrained=None,
            architecture=network.architecture,
            heads=head_settings(network),
            num_classes=self.num_classes,
            id2label=self.id2label,
            preprocessing=self.preprocessing,
        )
        self._task_inputs = self._tokens() if network.architecture == "oneformer" else None
        self._set_stuff(tuple(self.hparams.stuff_ids or ()))

    def _set_stuff(self, stuff: tuple[int, ...]) -> None:
        self.stuff_ids = tuple(i for i in stuff if i < self.num_classes)
        self.thing_ids = tuple(i for i in range(self.num_classes) if i not in self.stuff_ids)
        self._build_metrics()

    @property
    def card(self) -> ModelCard:
        """What an exported folder's README says: Mask2Former's or OneFormer's."""
        oneformer = self.network.architecture == "oneformer"
        return self.ONEFORMER_CARD if oneformer else self.MASK2FORMER_CARD

    def _build_metrics(self) -> None:
        hp = self.hparams
        settings = {
            "stuff_ids": self.stuff_ids,
            "threshold": hp.threshold,
            "overlap_mask_area_threshold": hp.overlap_mask_area_threshold,
        }
        self.val_metrics = UniversalMetrics(self.id2label, prefix="val/", **settings)
        self.test_metrics = UniversalMetrics(self.id2label, prefix="test/", **settings)
        self.losses = torch.nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def _tokens(self) -> dict[str, torch.Tensor]:
        """OneFormer's task prompts as token ids, one (task_seq_len,) row per task type."""
        recorded = self.hparams.get("task_token_ids")
        if recorded:
            return {t: torch.tensor(ids, dtype=torch.long) for t, ids in recorded.items()}
        source = getattr(self, "_tokenizer_source", None) or self.hparams.tokenizer
        if source is None:
            raise ValueError(
                "architecture='oneformer' needs the token ids of its task prompt ('the task is "
                "panoptic'): pass tokenizer= (a folder or Hub id with a CLIP tokenizer, such as "
                "shi-labs/oneformer_ade20k_dinat_large) or a pretrained OneFormer"
            )
        self.hparams.tokenizer = str(source)
        length = self.network.config.task_seq_len
        tokens = {t: task_tokens(t, length, str(source)) for t in TASK_TYPES}
        self.hparams.task_token_ids = {t: ids.tolist() for t, ids in tokens.items()}
        return tokens

    def _configure_network(self, data) -> None:
        """The data's stuff classes, unless ``stuff_ids`` was given (or recorded)."""
        if self.hparams.stuff_ids is not None or getattr(data, "stuff_ids", None) is None:
            return
        self._set_stuff(tuple(data.stuff_ids))
        self.hparams.stuff_ids = list(self.stuff_ids)

    def monitored(self, data) -> tuple[str, str]:
        """``val/miou`` for semantic annotations (every class is stuff: PQ adds nothing to the
        recipes' metric there), else the class's ``val/pq``."""
        columns = getattr(data, "columns", None)
        if getattr(columns, "kind", None) == "semantic":
            return "val/miou", "epoch{epoch:03d}-miou{val/miou:.4f}"
        return type(self).monitor, type(self).checkpoint_filename

    def _adopt_classes(self, id2label: dict[int, str]) -> None:
        self._use_network(with_classes(self.network, id2label))

    @property
    def backbone(self) -> torch.nn.Module:
        return self.network.backbone

    @property
    def backbone_config(self) -> NatConfig:
        return self.network.backbone.config

    def preprocessor_config(self, checkpoint: dict) -> dict:
        return universal_preprocessor_config(self, checkpoint)

    def export_image_size(self, checkpoint: dict) -> int:
        return self.preprocessor_config(checkpoint)["size"]["shortest_edge"]

    def _training_flops(self, shape: tuple[int, ...]) -> int:
        return 0  # transformers' matcher runs scipy on the host: no meta-device count

    # -- steps -----------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, task_type: TaskType | None = None, **labels):
        """transformers' output: ``class_queries_logits`` (B, Q, K + 1), ``masks_queries_logits``
        (B, Q, H/4, W/4), and ``loss`` with ``mask_labels``/``class_labels``."""
        tasks = None
        if self._task_inputs is not None:
            row = self._task_inputs[task_type or self.hparams.task_type]
            tasks = row.to(pixel_values.device).expand(len(pixel_values), -1)
        return self.network(pixel_values, task_inputs=tasks, **labels)

    def _labels(self, batch) -> dict[str, list[torch.Tensor]]:
        return {"mask_labels": batch["mask_labels"], "class_labels": batch["class_labels"]}

    def _training_loss(self, batch):
        out = self(batch["pixel_values"], "panoptic", **self._labels(batch))
        self.log("train/loss", out.loss, prog_bar=True, batch_size=len(batch["pixel_values"]))
        return out.loss

    def _evaluate(self, stage: str, batch) -> dict:
        """Logs the loss on every rank and batch (a batch without images included, weighted 0),
        so that every rank gathers the same at the epoch's end. ``{stage}/loss`` is the mean of
        the images' own losses, the same however the images are batched or split over ranks."""
        images, labels = batch["pixel_values"], batch["labels"]
        if len(images):
            out = self(images, "panoptic", output_auxiliary_logits=True)
            class_logits, mask_logits = out.class_queries_logits, out.masks_queries_logits
            masks = getattr(self, f"{stage}_metrics").update(
                class_logits, mask_logits, labels, batch["panoptic_map"], self._instances(batch)
            )
            losses = self.network.image_losses(out, **self._labels(batch))
        else:
            losses, masks = torch.zeros(0, device=images.device), labels
        # the mean over every rank's images of each image's loss (seeded: see image_losses)
        self.losses[stage].update(losses.sum() / max(len(losses), 1), weight=len(losses))
        self.log(
            f"{stage}/loss", self.losses[stage], prog_bar=stage == "val", batch_size=len(images)
        )
        return {"masks": masks.masked_fill(labels == IGNORE_INDEX, IGNORE_INDEX), "labels": labels}

    def _instances(self, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each image's thing segments (masks, classes): mask AP's ground truth."""
        things = torch.tensor(self.thing_ids, dtype=torch.long)
        found = []
        for masks, classes in zip(batch["mask_labels"], batch["class_labels"]):
            keep = torch.isin(classes, things.to(classes.device))
            found.append((masks[keep].bool(), classes[keep]))
        return found

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()  # every rank: gathers every rank's states
        metrics.reset()
        if self.trainer.sanity_checking:
            return
        # equal on all ranks: "max" is the value, and logging it as synced keeps Lightning quiet
        pq = values.pop(f"{stage}/pq")
        self.log(f"{stage}/pq", pq, prog_bar=stage == "val", sync_dist=True, reduce_fx="max")
        self.log_dict(values, sync_dist=True, reduce_fx="max")

    def _predict(self, batch) -> dict:
        """``segments``: per decoded image, its ``task_type`` result at its original size
        (universal_outputs' ``segmentation`` and ``segments_info``, ``masks`` for instances)."""
        images, mode = batch["pixel_values"], self.hparams.task_type
        segments = []
        if len(images):
            out = self(images)
            full = torch.tensor([images.shape[-2:]] * len(images))
            content, sizes = batch.get("content", full), batch.get("sizes", full)
            for i, ((ch, cw), size) in enumerate(zip(content.tolist(), sizes.tolist())):
                class_logits = out.class_queries_logits[i : i + 1]
                mask_logits = _crop_masks(out.masks_queries_logits[i : i + 1], images, ch, cw)
                segments.append(self._segments(class_logits, mask_logits, tuple(size)))
        return {"mode": mode, "segments": segments}

    def _segments(self, class_logits, mask_logits, size) -> dict:
        hp, sizes = self.hparams, [size]
        if hp.task_type == "semantic":
            seg = semantic_segmentation(class_logits, mask_logits, sizes)[0].to(torch.int32)
            return {"segmentation": seg.cpu(), "segments_info": []}
        if hp.task_type == "instance" and self.network.architecture == "oneformer":
            found = oneformer_instance_segmentation(
                class_logits, mask_logits, hp.threshold, thing_ids=self.thing_ids,
                target_sizes=sizes,
            )  # fmt: skip
        elif hp.task_type == "instance":
            found = instance_segmentation(class_logits, mask_logits, hp.threshold, sizes)
            found = [things_only(found[0], self.stuff_ids)]
        else:
            found = panoptic_segmentation(
                class_logits, mask_logits, hp.threshold,
                overlap_mask_area_threshold=hp.overlap_mask_area_threshold,
                label_ids_to_fuse=self.stuff_ids, target_sizes=sizes,
            )  # fmt: skip
        return {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in found[0].items()}

    # -- optimisation ----------------------------------------------------------------------------

    def _param_groups(self) -> list[dict]:
        hp = self.hparams
        return backbone_param_groups(
            self.network, hp.weight_decay, hp.layer_decay, hp.backbone_lr_mult
        )

    def _lr_scheduler(self, optimizer, warmup_steps: int, total_steps: int):
        hp = self.hparams
        if hp.lr_steps is not None:
            return warmup_steps_decay(optimizer, warmup_steps, total_steps, hp.lr_steps)
        return warmup_poly(optimizer, warmup_steps, total_steps, hp.min_lr / hp.lr, hp.poly_power)


def _crop_masks(mask_logits: torch.Tensor, images: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The mask logits of an image's content (h, w of the padded input), at their own scale."""
    H, W = images.shape[-2:]
    mh, mw = mask_logits.shape[-2:]
    return mask_logits[..., : max(round(h * mh / H), 1), : max(round(w * mw / W), 1)]
