"""Which task a command line runs: one ``nat-lightning`` command serves every LightningModule.

The model class is chosen in YAML (``model: {class_path: nat_lightning.NatSegmenter, ...}``), on
the command line (``--model NatSegmenter``) or, for evaluation, by the checkpoint
(``validate --ckpt_path seg.ckpt``); NatClassifier otherwise. Each task brings its default data
module and the metric its best checkpoints are chosen by, so a config names only what differs.

The choice is read before LightningCLI parses, and given to it as the parser's default class:
jsonargparse keeps the init arguments of a default class when another class replaces it (so a
segmenter chosen in YAML would inherit the classifier's ``lr``), which a default that is
already the chosen class never does.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import yaml

from .models.files import read_lightning_checkpoint


@dataclass(frozen=True)
class Task:
    """A LightningModule class and what the CLI sets for it by default."""

    model: str  # class path
    data: str  # class path of its default data module
    monitor: str  # the metric ModelCheckpoint keeps the best epochs by (higher is better)
    filename: str  # ModelCheckpoint's file name of those epochs
    writer: str  # class path of the callback that writes predict's outputs (``--prediction.*``)


TASKS = (
    Task(
        "nat_lightning.NatClassifier",
        "nat_lightning.HFImageDataModule",
        "val/acc1",
        "epoch{epoch:03d}-acc{val/acc1:.4f}",
        "nat_lightning.callbacks.prediction_writer.PredictionWriter",
    ),
    Task(
        "nat_lightning.NatSegmenter",
        "nat_lightning.HFSegmentationDataModule",
        "val/miou",
        "epoch{epoch:03d}-miou{val/miou:.4f}",
        "nat_lightning.callbacks.mask_writer.MaskWriter",
    ),
)
DEFAULT_TASK = TASKS[0]


def import_class(path: str) -> type:
    """``nat_lightning.NatSegmenter``, ``my_pkg.module.MyTask`` or a bare name exported by
    nat_lightning (``NatSegmenter``), as jsonargparse accepts them."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "nat_lightning"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"model class {path!r} cannot be imported ({err}); expected one of "
            f"{[t.model for t in TASKS]} or an importable class path"
        ) from err


def task_of(class_path: str) -> Task | None:
    """The Task of a class (or of a subclass of a known task); None for other LightningModules."""
    cls = import_class(class_path)
    for task in TASKS:
        if issubclass(cls, import_class(task.model)):
            return task
    return None


def chosen_classes(args: list[str]) -> tuple[str, str | None]:
    """(model class path, data class path or None) that ``args`` choose, later choices winning:
    ``--config`` files, ``--model``/``--data`` values, else the class a ``--ckpt_path`` file was
    trained as."""
    model = data = ckpt_model = None
    for flag, value in _flag_values(args):
        if flag == "--config":
            config = _read_yaml(value)
            model = _class_in(config.get("model")) or model
            data = _class_in(config.get("data")) or data
        elif flag == "--model":
            model = _class_in(_option(value)) or model
        elif flag == "--data":
            data = _class_in(_option(value)) or data
        elif flag == "--ckpt_path" and Path(value).is_file():
            ckpt_model = checkpoint_class(value)
    return model or ckpt_model or DEFAULT_TASK.model, data


def _flag_values(args: list[str]):
    """(flag, value) for ``--flag value`` and ``--flag=value``."""
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            yield tuple(arg.split("=", 1))
        elif i + 1 < len(args):
            yield arg, args[i + 1]


def _read_yaml(path: str) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}  # LightningCLI reports an unreadable config itself
    return config if isinstance(config, dict) else {}


def _option(value: str):
    """``--model`` takes a class name, a YAML/JSON string or a config file."""
    if value.endswith((".yaml", ".yml", ".json")) and Path(value).is_file():
        return _read_yaml(value)
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _class_in(section) -> str | None:
    if isinstance(section, dict):
        return section.get("class_path")
    return section if isinstance(section, str) else None


def checkpoint_class(path: str) -> str | None:
    """:func:`recorded_class` of the checkpoint file at ``path``; None if it cannot be read."""
    try:
        checkpoint = read_lightning_checkpoint(path)
    except (OSError, ValueError):  # the CLI reports an unreadable checkpoint itself
        return None
    return recorded_class(checkpoint)


def recorded_class(checkpoint: dict) -> str | None:
    """The class a checkpoint's CLI recorded, else the task whose arguments fit its saved ones
    (``Trainer.fit(NatSegmenter())`` records no class path)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "_class_path" in hparams:
        return hparams["_class_path"]
    saved = set(hparams) - {"_instantiator"}
    for task in TASKS:
        if saved <= set(inspect.signature(import_class(task.model)).parameters):
            return task.model
    return None
