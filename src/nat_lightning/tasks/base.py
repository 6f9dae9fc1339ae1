"""NatTask: what every NAT/DiNAT LightningModule shares (NatClassifier, NatSegmenter).

- the classes: taken from the attached datamodule when none were given, checked when they were;
- the data's preprocessing, recorded into the hyperparameters so a checkpoint evaluates with it;
- AdamW over the optimiser groups of ``optim.param_groups`` (no decay on norms, biases, rpb and
  layer scales; optional layer decay) with a warmup schedule sized from the Trainer, kept as the
  checkpoint's ``lr_schedule`` on resume;
- the callbacks: skipped-image reports, RNG state, backbone freezing (BackboneFreeze) and EMA
  (Lightning's EMAWeightAveraging);
- batches of undecodable images only, skipped in training;
- the FLOPs of a training batch (``flops_per_batch``), for ImageThroughputMonitor;
- the embedded default data, used when fit, validate or test gets no data at all.

The contract is stated in code: what the CLI and export read of a task are class attributes
(``monitor``, ``monitor_mode``, ``checkpoint_filename``, ``data_class``, ``writer_class``,
``card``; a concrete task without them is a TypeError), and what a task must define are abstract
methods (``abc``). A subclass builds ``self.network`` and sets ``self.id2label``,
``self.num_classes``, ``self.preprocessing`` and ``self._classes_from_data`` in its ``__init__``,
then calls ``_init_task``.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_warn

from ..batch import IDS, PIXEL_VALUES
from ..callbacks.finetuning import BackboneFreeze
from ..callbacks.rng_state import RNGState
from ..callbacks.skipped_images import SkippedImagesReport
from ..models import NatConfig
from .class_weights import check_class_weights, counted_class_weights, given_weights
from .network import pretrained_preprocessing
from .optim import schedule_length


@dataclass(frozen=True)
class ModelCard:
    """What the model card of an exported task says: its embedded data, tags, pipeline, title (with
    ``{kind}``, NAT or DiNAT), and our and transformers' class that load the folder."""

    embedded: str
    tags: str
    pipeline: str
    title: str
    ours: str
    theirs: str


class NatTask(L.LightningModule, abc.ABC):
    # -- what the CLI and export read of a task: every concrete task sets these ---------------
    monitor: ClassVar[str]  # the metric ModelCheckpoint keeps the best epochs by
    monitor_mode: ClassVar[str] = "max"  # whether higher ("max") or lower ("min") is better
    checkpoint_filename: ClassVar[str]  # ModelCheckpoint's file name for those epochs
    data_class: ClassVar[str]  # class path of its default data module (``--data.*``)
    writer_class: ClassVar[str]  # class path of predict's writer callback (``--prediction.*``)
    card: ClassVar[ModelCard]  # what an exported folder's README says of the task
    # what validation_step returns for callbacks.pictures.ValidationPictures: "classes" (logits,
    # labels), "label_sets" (logits, 0/1 label rows), "masks" (masks, labels); None: nothing
    pictures: ClassVar[str | None] = None
    # why ``export --format onnx`` cannot write this task's network; None: it can (logits out)
    onnx_unsupported: ClassVar[str | None] = None
    _DECLARED = ("monitor", "checkpoint_filename", "data_class", "writer_class", "card")

    # the datamodule attributes recorded as ``preprocessing`` (all of them, or none)
    PREPROCESSING_KEYS: tuple[str, ...] = ("image_size", "crop_pct", "mean", "std")
    # the state_dict key of the classifier layer whose rows are the classes (checked on load)
    HEAD_WEIGHT = "network.head.weight"
    HEAD_EXTRA_ROWS = 0  # its rows beyond the classes (a "no object" class)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # (ABCMeta computes __abstractmethods__ only after this hook: look at the methods)
        abstract = any(
            getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in dir(cls)
        )
        missing = [name for name in cls._DECLARED if not hasattr(cls, name)]
        if missing and not abstract:
            raise TypeError(f"task {cls.__name__} must set the class attributes {missing}")

    def __init__(
        self,
        model: str | NatConfig | dict[str, Any] | None = None,
        pretrained: str | None = None,
        num_classes: int | None = None,
        id2label: dict[int, str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        attention_backend: str = "auto",
        drop_path_rate: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = None,
        warmup_epochs: float = 1.0,
        warmup_steps: int | None = None,
        min_lr: float = 1e-6,
        rescale_schedule: bool = False,
        finetune: Literal["full", "linear_probe", "freeze_backbone"] = "full",
        unfreeze_at_epoch: int = 1,
        ema_decay: float | None = None,
        compile: bool = False,
        class_weights: str | list[float] | None = None,
    ):
        """What every task takes; a subclass passes these on with ``**kwargs``.

        Args:
            model: the network (the backbone of a dense task): a variant name (``nat_mini``,
                ``dinat_tiny``, ...), a NatConfig, or its dict. None: the pretrained checkpoint's,
                else the task's small default for its embedded data. Beside ``pretrained`` a variant
                name must match the checkpoint's architecture.
            pretrained: a transformers-layout folder or Hub id (e.g. shi-labs/nat-mini-in1k-224), an
                original SHI-Labs ``.pth`` read with ``model`` as its config, or one of our ``.ckpt``
                files (its network only: a new run, unlike ``--ckpt_path``). A dense task also takes
                a classification checkpoint of any of these kinds, for its backbone alone.
            num_classes: classes of the head; None: the datamodule's (a new head where the
                checkpoint's differs), or the checkpoint's head without a datamodule.
            id2label: class names by id; None: the datamodule's. Kept in checkpoints and exports.
            preprocessing: the data settings (e.g. ``image_size``, ``crop_pct``, ``mean``, ``std``)
                that the datamodule uses where it sets none itself; None: the pretrained folder's
                preprocessor_config.json. Fit records the data's values here, so a checkpoint
                evaluates with them.
            attention_backend: ``auto``, ``fused``, ``torch``, ``natten``, ``flex`` or ``reference`` (see
                nat_lightning.ops).
            drop_path_rate: stochastic depth rate; None keeps the model config's.
            lr: peak learning rate of AdamW.
            weight_decay: AdamW weight decay (not on norms, biases, rpb and layer scales).
            betas: AdamW betas.
            layer_decay: layer-wise LR decay factor (e.g. 0.75 for fine-tuning); None disables it.
            warmup_epochs: linear warmup length in epochs of the training data (fractions allowed).
            warmup_steps: warmup length in optimizer steps; replaces warmup_epochs when given.
            min_lr: learning rate at the end of the schedule.
            rescale_schedule: on resume, size the schedule for this fit's length instead of the one
                the checkpoint's run was sized for (a longer run otherwise stays at min_lr).
            finetune: ``full``; ``linear_probe`` (backbone frozen); ``freeze_backbone`` until
                ``unfreeze_at_epoch``.
            unfreeze_at_epoch: epoch at which ``freeze_backbone`` thaws the backbone.
            ema_decay: keep an EMA of the weights (Lightning's EMAWeightAveraging) and validate on it.
            compile: ``torch.compile`` the network.
            class_weights: weights of the classes in the training loss, against class imbalance:
                ``auto`` (inverse frequency in the training split, counted at fit), ``none``, or
                one weight per class (see tasks.class_weights). Validation and test losses stay
                unweighted, comparable across runs.
        """
        super().__init__()
        self.save_hyperparameters()  # this frame's arguments and the subclass's (its **kwargs)
        self.network = self._build_network()
        self.preprocessing = preprocessing or pretrained_preprocessing(pretrained)
        self._classes_from_data = num_classes is None and id2label is None
        self._use_network(self.network)
        self.register_buffer("class_weights", self._initial_class_weights())
        self._init_task()

    def _init_task(self) -> None:
        self._fallback_data = None
        self._resumed_schedule: tuple[int, int] | None = None
        self.schedule: tuple[int, int] | None = None  # (warmup, total) steps of the current fit
        self.flops_per_batch: int | None = None  # read by ImageThroughputMonitor

    # -- the classes and preprocessing of the attached data ------------------------------------

    def configure_model(self) -> None:
        """Take the datamodule's classes when none were given; check them when they were.

        Runs after the datamodule's ``setup`` and before a checkpoint is restored (EMA calls it
        earlier, from its own ``setup``); idempotent. ``load_from_checkpoint`` calls it with no
        trainer: the checkpoint's classes are the model's then.
        """
        if self._trainer is None:
            return
        data = self.trainer.datamodule
        stage = self.trainer.state.fn
        if data is None and stage != "predict" and self._uses_fallback_data():
            data = self._default_data()  # no data given: the embedded default's classes
        if data is not None and hasattr(data, "id2label") and stage != "predict":
            names = {int(k): str(v) for k, v in data.id2label.items()}
            if self._classes_from_data:
                if names != self.id2label:
                    self._adopt_classes(names)
                self._classes_from_data = False
            else:
                check_classes(self.id2label, names, stage)
            self._record_preprocessing(data)
        elif self._classes_from_data and stage == "fit" and not self._uses_fallback_data():
            rank_zero_warn(
                f"no num_classes and no datamodule to take them from: the head has "
                f"{self.num_classes} classes; pass num_classes= (and id2label=)"
            )
        self._configure_class_weights(data, stage)
        self._configure_network(data)
        if self.hparams.compile and not getattr(self.network, "_compiled_call_impl", None):
            self.network.compile()

    def _configure_network(self, data) -> None:
        """What a task sets up on its network once the data is known, before compiling."""

    # -- class weights (tasks.class_weights): a buffer, so checkpoints keep them ----------------

    def _initial_class_weights(self) -> torch.Tensor | None:
        """None for no weights; a given list, checked against the classes once they are known;
        ones for ``auto`` until fit counts the data (or a checkpoint restores its weights)."""
        value = self.hparams.class_weights
        check_class_weights(value)
        self._class_weights_set = False  # given, or counted in this fit: they win on restore
        if value is None or value == "none":
            return None
        if value == "auto":
            return torch.ones(self.num_classes)
        if self._classes_from_data:  # the data's classes decide the length (configure_model)
            return torch.tensor([float(w) for w in value])
        self._class_weights_set = True
        return given_weights(value, self.id2label)

    def _configure_class_weights(self, data, stage: str) -> None:
        """Check given weights against the classes; count ``auto`` ones once per fit."""
        value, device = self.hparams.class_weights, getattr(self.class_weights, "device", None)
        if self.class_weights is None:
            return
        if value != "auto":
            self.class_weights = given_weights(value, self.id2label).to(device)
            self._class_weights_set = True
        elif stage == "fit" and not self._class_weights_set:
            self.class_weights = self._counted_class_weights(data).to(device)
            self._class_weights_set = True
        elif len(self.class_weights) != self.num_classes:  # classes adopted from the data
            self.class_weights = torch.ones(self.num_classes, device=device)

    def monitored(self, data) -> tuple[str, str]:
        """(the metric the best checkpoints are kept by, their file name) for a fit on ``data``
        (callbacks.checkpoints.BestCheckpoint asks): the class's by default."""
        return self.monitor, self.checkpoint_filename

    def _counted_class_weights(self, data) -> torch.Tensor:
        """``class_weights=auto``: balanced weights of the data's training label counts."""
        return counted_class_weights(data, self.id2label)

    def _record_preprocessing(self, data) -> None:
        keys = self.PREPROCESSING_KEYS
        if all(getattr(data, k, None) is not None for k in keys):
            self.preprocessing = {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in ((k, getattr(data, k)) for k in keys)
            }
            self.hparams["preprocessing"] = self.preprocessing

    def on_train_batch_start(self, batch, batch_idx):
        if self.flops_per_batch is None and len(batch["pixel_values"]):
            self.flops_per_batch = self._training_flops(tuple(batch["pixel_values"].shape))

    # -- steps ---------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        if len(batch["pixel_values"]) == 0:  # every image was undecodable: skipped (and counted)
            return None
        return self._training_loss(batch)

    def validation_step(self, batch, batch_idx):
        return self._evaluate("val", batch)  # (for on_validation_batch_end: ValidationPictures)

    def test_step(self, batch, batch_idx):
        return self._evaluate("test", batch)

    def predict_step(self, batch, batch_idx):
        """What the prediction writers write: ``ids`` (every input of the batch, in order),
        ``errors`` (None, or why an input has no prediction: it could not be decoded) and the
        task's predictions of the decoded inputs, in order (``_predict``)."""
        ids = batch.get(IDS, list(range(len(batch[PIXEL_VALUES]))))
        decoded = batch.get("decoded", [True] * len(ids))
        errors = [None if ok else "undecodable image" for ok in decoded]
        return {IDS: ids, "errors": errors, **self._predict(batch)}

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self._param_groups(), lr=hp.lr, betas=tuple(hp.betas))
        self.schedule = self._sized_schedule(
            schedule_length(self.trainer, hp.warmup_epochs, hp.warmup_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self._lr_scheduler(optimizer, *self.schedule),
                "interval": "step",
            },
        }

    def _sized_schedule(self, wanted: tuple[int, int]) -> tuple[int, int]:
        """A resumed run keeps the schedule it was sized for unless rescale_schedule is set."""
        old = self._resumed_schedule
        if old is None or old == wanted:
            return wanted
        sizes = (
            f"warmup {old[0]} / total {old[1]} steps, this fit's length gives "
            f"{wanted[0]} / {wanted[1]}"
        )
        if self.hparams.rescale_schedule:
            rank_zero_warn(
                f"resumed run: re-sizing its LR schedule ({sizes}; rescale_schedule=True)"
            )
            return wanted
        rank_zero_warn(
            f"resumed run: keeping the LR schedule it was sized for ({sizes}); past its end "
            "the LR stays at min_lr. Pass --model.rescale_schedule true to re-size it"
        )
        return old

    def configure_callbacks(self):
        # undecodable-image reports; RNG state in checkpoints for exact resumes
        callbacks = [SkippedImagesReport(), RNGState()]
        if self.hparams.finetune != "full":
            thaw = (
                None if self.hparams.finetune == "linear_probe" else self.hparams.unfreeze_at_epoch
            )
            callbacks.append(BackboneFreeze(unfreeze_at_epoch=thaw))
        if self.hparams.ema_decay is not None:
            callbacks.append(EMAWeightAveraging(decay=self.hparams.ema_decay))
        return callbacks

    # -- checkpoints and export ----------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.schedule is not None:
            checkpoint["lr_schedule"] = {
                "warmup_steps": self.schedule[0],
                "total_steps": self.schedule[1],
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        head = checkpoint.get("state_dict", {}).get(self.HEAD_WEIGHT)
        if head is not None and head.shape[0] != self.num_classes + self.HEAD_EXTRA_ROWS:
            raise ValueError(
                f"the checkpoint's head has {head.shape[0] - self.HEAD_EXTRA_ROWS} classes but this model has "
                f"num_classes={self.num_classes}; to evaluate it, leave num_classes/id2label unset "
                "(they come from the checkpoint); to fine-tune it on other labels, export it "
                "(nat-lightning export) and pass the folder as pretrained="
            )
        state = checkpoint.get("state_dict", {})
        if self.class_weights is None:  # a checkpoint trained with weights, evaluated without
            state.pop("class_weights", None)
        elif self._class_weights_set or "class_weights" not in state:
            state["class_weights"] = self.class_weights.clone()  # this run's weights win
        schedule = checkpoint.get("lr_schedule")
        if schedule is not None:
            self._resumed_schedule = (schedule["warmup_steps"], schedule["total_steps"])

    def save_pretrained(self, directory) -> None:
        """Write the network in transformers' layout (config.json + model.safetensors)."""
        self.network.save_pretrained(directory)

    # -- what a task must define ---------------------------------------------------------------

    @abc.abstractmethod
    def _build_network(self) -> torch.nn.Module:
        """The network from ``self.hparams`` (model, pretrained, classes, the task's own)."""

    @abc.abstractmethod
    def _use_network(self, network: torch.nn.Module) -> None:
        """Adopt ``network``: set ``id2label``/``num_classes``, record its resolved config in the
        hyperparameters, and build what depends on its classes (metrics, mixing)."""

    @property
    @abc.abstractmethod
    def backbone(self) -> torch.nn.Module:
        """The feature extractor: what finetuning freezes and layer decay starts from."""

    @property
    @abc.abstractmethod
    def backbone_config(self):
        """The NatConfig of the backbone (variant, dilations), for the model card."""

    @abc.abstractmethod
    def _adopt_classes(self, id2label: dict[int, str]) -> None:
        """Rebuild the head (and metrics) for the data's classes."""

    @abc.abstractmethod
    def _training_loss(self, batch) -> torch.Tensor:
        """The loss of a training batch (logging its metrics)."""

    @abc.abstractmethod
    def _evaluate(self, stage: str, batch) -> dict | None:
        """Update ``stage``'s (val, test) metrics with a batch; return what ``pictures`` says
        (its predictions and labels, computed here once), or None."""

    @abc.abstractmethod
    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute, log and reset ``stage``'s metrics at the end of its epoch."""

    @abc.abstractmethod
    def _predict(self, batch) -> dict:
        """The predictions of a batch's decoded images, for the task's prediction writer."""

    @abc.abstractmethod
    def _param_groups(self) -> list[dict]:
        """AdamW's parameter groups (optim.param_groups)."""

    @abc.abstractmethod
    def _lr_scheduler(self, optimizer, warmup_steps: int, total_steps: int):
        """The per-step LR schedule of the task's recipe."""

    @abc.abstractmethod
    def _training_flops(self, shape: tuple[int, ...]) -> int:
        """FLOPs of one training step on a batch of ``shape``."""

    @abc.abstractmethod
    def preprocessor_config(self, checkpoint: dict) -> dict:
        """transformers' preprocessor_config.json for the data the checkpoint evaluated with."""

    @abc.abstractmethod
    def export_image_size(self, checkpoint: dict) -> int:
        """The square image size of an ONNX export, by default."""

    # -- the embedded default data, used only when no data at all is given --------------------

    def _uses_fallback_data(self) -> bool:
        """True when fit/validate got neither dataloaders nor a datamodule: Lightning then asks
        the module itself for its training data."""
        source = getattr(getattr(self.trainer.fit_loop, "_data_source", None), "instance", self)
        return source is self

    def _default_datamodule(self):
        """The data module ``data_class`` names, on its embedded dataset (its ``embedded()``)."""
        module, _, name = self.data_class.rpartition(".")
        return getattr(importlib.import_module(module), name).embedded()

    def _default_data(self):
        if self._fallback_data is None:
            self._fallback_data = self._default_datamodule()
            self._fallback_data.setup("fit")
        return self._fallback_data

    def train_dataloader(self):
        return self._default_data().train_dataloader()

    def val_dataloader(self):
        # fit(model, train_dataloaders=x) without validation data validates on nothing
        return self._default_data().val_dataloader() if self._uses_fallback_data() else []

    def test_dataloader(self):
        # only asked for by test() without dataloaders or a datamodule: as validate(), the
        # embedded data's validation split (it has no test split)
        return self._default_data().val_dataloader()


def meta_training_flops(network_class, config, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward+backward of ``network_class(config)`` on images of ``shape``,
    counted on the meta device (no compute)."""
    with torch.device("meta"):
        network = network_class(config)
        images = torch.empty(shape)
    return measure_flops(network, lambda: network(images).logits, loss_fn=torch.Tensor.sum)


def check_classes(model: dict[int, str], data: dict[int, str], stage: str) -> None:
    """The head's classes against the data's: a different count is an error, other names a
    warning."""
    if len(model) != len(data):
        fix = (
            (
                "evaluate on the dataset it was trained on (its checkpoint names it; --data.dataset "
                "overrides it) or on one with the same labels"
            )
            if stage != "fit"
            else ("leave num_classes/id2label unset to take the data's classes")
        )
        raise ValueError(
            f"the model's head has {len(model)} classes but the data has {len(data)} "
            f"({list(data.values())[:10]}{'...' if len(data) > 10 else ''}): {fix}"
        )
    if model != data:
        rank_zero_warn(
            f"the model's class names {list(model.values())[:10]} differ from the data's "
            f"{list(data.values())[:10]}: class ids are compared as they are"
        )
