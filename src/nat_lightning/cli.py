"""``python -m nat_lightning`` / ``nat-lightning``: LightningCLI for fit, validate, test,
predict, plus ``export``.

    nat-lightning fit --config configs/quickstart.yaml
    nat-lightning fit --config configs/quickstart.yaml --ckpt_path last     # resume
    nat-lightning predict --config configs/eval.yaml --data.predict_paths images/
    nat-lightning export --ckpt_path runs/quickstart/checkpoints/last.ckpt --output exported/
"""

from __future__ import annotations

import os
import sys

import torch
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    OnExceptionCheckpoint,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks.prediction_writer import PredictionWriter
from .callbacks.throughput import ImageThroughputMonitor
from .data import HFImageDataModule
from .tasks import NatClassifier



def default_callbacks(trainer_config: dict) -> list:
    """Rich progress bar and summary, LR and images/s logging, unless the config turns them off."""
    callbacks = []
    if trainer_config.get("enable_progress_bar") is not False:
        callbacks.append(RichProgressBar())
    if trainer_config.get("enable_model_summary") is not False:
        callbacks.append(RichModelSummary(max_depth=2))
    if trainer_config.get("logger") is not False:
        callbacks += [LearningRateMonitor(logging_interval="step"), ImageThroughputMonitor()]
    return callbacks


def _in_dir(name: str):
    return lambda root: os.path.join(root or os.getcwd(), name)


class NatLightningCLI(LightningCLI):
    """LightningCLI with the data's classes linked into the model and checkpointing always on."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.id2label", "model.id2label", apply_on="instantiate")
        # best by val/acc1 plus last.ckpt, in <default_root_dir>/checkpoints so that
        # `--ckpt_path last` finds them again from a new process
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-acc{val/acc1:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_in_dir("checkpoints"))
        # Ctrl-C and SIGTERM end fit through Lightning's exception path: save before exiting
        parser.add_lightning_class_args(OnExceptionCheckpoint, "on_exception")
        parser.link_arguments("trainer.default_root_dir", "on_exception.dirpath", compute_fn=_in_dir("checkpoints"))
        parser.add_lightning_class_args(PredictionWriter, "prediction")

    def instantiate_trainer(self, **kwargs):
        """Adds :func:`default_callbacks` (kept besides any callbacks the config lists)."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        self.trainer_defaults["callbacks"] = default_callbacks(config)
        return super().instantiate_trainer(**kwargs)


def export_main(argv: list[str]) -> None:
    from jsonargparse import CLI

    from .export import export

    CLI(export, args=argv, as_positional=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: process-wide settings live here, not at import time."""
    argv = sys.argv[1:] if argv is None else argv
    torch.set_float32_matmul_precision("high")
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    NatLightningCLI(
        NatClassifier,
        HFImageDataModule,
        trainer_defaults={"default_root_dir": "runs/nat"},
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=argv,
    )
