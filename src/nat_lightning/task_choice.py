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
from pathlib import Path

import yaml

from .files import read_lightning_checkpoint
from .tasks.base import NatTask

DEFAULT_TASK = "nat_lightning.NatClassifier"
LAZY_TASK_MODULES = ("nat_lightning.tasks.universal",)  # not imported by ``import nat_lightning``


def import_class(path: str) -> type:
    """``nat_lightning.NatSegmenter``, ``my_pkg.module.MyTask`` or a bare name exported by
    nat_lightning (``NatSegmenter``), as jsonargparse accepts them."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "nat_lightning"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"model class {path!r} cannot be imported ({err}); expected one of "
            f"{[class_path(t) for t in known_tasks()]} or an importable class path"
        ) from err


def task_of(path: str) -> type[NatTask] | None:
    """The task class at ``path`` (a NatTask: it carries its data module, metric and writer);
    None for other LightningModules."""
    cls = import_class(path)
    return cls if isinstance(cls, type) and issubclass(cls, NatTask) else None


def known_tasks() -> list[type[NatTask]]:
    """The concrete NatTask classes: nat_lightning's own (those imported lazily included) and
    any user's imported so far."""
    for module in LAZY_TASK_MODULES:
        importlib.import_module(module)
    found, todo = [], list(NatTask.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        if not getattr(cls, "__abstractmethods__", None):
            found.append(cls)
    return found


def init_arguments(cls: type) -> list[str]:
    """The names ``cls(...)`` accepts: its ``__init__``'s and, where that passes ``**kwargs`` on,
    its bases' (as jsonargparse follows them), in that order."""
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return [n for i, n in enumerate(names) if n != "self" and n not in names[:i]]


def class_path(cls: type) -> str:
    """``nat_lightning.NatClassifier`` for the package's own tasks, else module.name."""
    import nat_lightning

    if getattr(nat_lightning, cls.__name__, None) is cls:
        return f"nat_lightning.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


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
    return model or ckpt_model or DEFAULT_TASK, data


def chosen_value(args: list[str], key: str):
    """The value ``args`` give a dotted ``key`` (``trainer.default_root_dir``): the last of the
    ``--config`` files' and ``--key value`` flags, as LightningCLI reads them; None if none."""
    found = None
    for flag, value in _flag_values(args):
        if flag == "--config":
            section = _read_yaml(value)
            for part in key.split("."):
                section = section.get(part) if isinstance(section, dict) else None
            found = section if section is not None else found
        elif flag == f"--{key}":
            found = yaml.safe_load(value)
    return found


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
    for task in known_tasks():
        if saved <= set(init_arguments(task)):
            return class_path(task)
    return None
