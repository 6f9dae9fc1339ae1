"""``python -m nat_lightning`` / ``nat-lightning``: LightningCLI for fit, validate, test,
predict, plus ``export``.

    nat-lightning fit --config configs/quickstart.yaml                        # a fresh run folder
    nat-lightning fit --config configs/quickstart.yaml --ckpt_path last       # resume the newest
    nat-lightning validate --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt
    nat-lightning predict --ckpt_path ... --data.predict_paths images/
    nat-lightning export --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --output exported/

Every run writes into its own ``<default_root_dir>/version_N/`` (see nat_lightning.runs). A
checkpoint given with ``--ckpt_path`` supplies the model's and the data's arguments (network,
classes, image size, crop, mean/std, dataset) as defaults: ``--config`` and command-line values
still win, so a checkpoint evaluates on its own and any part can be overridden.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from . import runs, task_choice
from .callbacks.checkpoints import (
    AtomicCheckpointIO,
    BestCheckpoint,
    ExceptionCheckpoint,
    LastCheckpoint,
)
from .callbacks.pictures import ValidationPictures
from .callbacks.preemption import StopAllRanksOnSigterm
from .callbacks.throughput import ImageThroughputMonitor
from .files import read_lightning_checkpoint

DEFAULT_ROOT = runs.DEFAULT_ROOT
# Lightning's DDP launcher re-runs this command line in child processes; they inherit rank 0's
# run folder through this variable instead of creating their own (plumbing, not a user switch).
_RUN_ENV = "NAT_LIGHTNING_RUN_DIR"


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


def run_loggers(folder: Path) -> list:
    """CSV logs (and TensorBoard where installed) written straight into ``folder``."""
    loggers = [CSVLogger(save_dir=folder, name="", version="")]
    if _TENSORBOARD_AVAILABLE:
        loggers.append(TensorBoardLogger(save_dir=folder, name="", version=""))
    return loggers


def checkpoint_defaults(checkpoint: dict, model_class: str, data_class: str | None) -> dict:
    """``model`` and ``data`` defaults (class and init arguments) from a checkpoint's saved
    arguments; only those the chosen classes accept."""
    defaults = {}
    for key, saved, class_path in (
        ("model", checkpoint.get("hyper_parameters"), model_class),
        ("data", checkpoint.get("datamodule_hyper_parameters"), data_class),
    ):
        saved = dict(saved or {})
        class_path = class_path or saved.get("_class_path")
        if class_path is None:
            continue
        accepted = task_choice.init_arguments(task_choice.import_class(class_path))
        init_args = {k: v for k, v in saved.items() if k in accepted}
        if isinstance(init_args.get("dataset"), str) and init_args["dataset"].startswith(
            "<in-memory"
        ):
            del init_args["dataset"]  # an in-memory dataset is recorded by its description only
        defaults[key] = {"class_path": class_path, "init_args": init_args}
    return defaults


class NatLightningCLI(LightningCLI):
    """LightningCLI with run folders, self-contained checkpoints and checkpointing always on,
    for any task: the model and data classes are chosen in YAML or on the command line (see
    nat_lightning.task_choice), NatClassifier and its data by default."""

    def __init__(self, *args, task_args: list[str] | None = None, **kwargs):
        """``task_args``: the command line the task is read from (default: ``sys.argv``)."""
        chosen = task_args if task_args is not None else kwargs.get("args") or sys.argv[1:]
        self._chosen_model, data_class = task_choice.chosen_classes(
            [str(a) for a in chosen] if isinstance(chosen, list) else []
        )
        self._task = task_choice.task_of(self._chosen_model)
        self._chosen_data = data_class or (self._task.data_class if self._task else None)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        defaults = {"model": {"class_path": self._chosen_model}}
        if self._chosen_data:
            defaults["data"] = {"class_path": self._chosen_data}
        parser.set_defaults(defaults)
        # the best epochs by the task's metric; last.ckpt is LastCheckpoint's, every epoch
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        if self._task is not None:
            parser.set_defaults(
                {
                    "checkpoint.monitor": self._task.monitor,
                    "checkpoint.mode": self._task.monitor_mode,
                    "checkpoint.filename": self._task.checkpoint_filename,
                    "checkpoint.auto_insert_metric_name": False,
                }
            )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        # a confusion matrix and samples, or overlays, after each validation: <run>/pictures/
        parser.add_lightning_class_args(ValidationPictures, "pictures")
        # predict's outputs: a CSV of classes, or mask PNGs and their index for the segmenter
        task = self._task or task_choice.task_of(task_choice.DEFAULT_TASK)
        parser.add_lightning_class_args(task_choice.import_class(task.writer_class), "prediction")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self._args = args  # kept for the second parse with a checkpoint's defaults
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` and parse again with the checkpoint's arguments as defaults.

        Replaces Lightning's version, which lays the checkpoint's model arguments over the config
        and the command line (so an explicit value lost) and ignores the data's.
        """
        self._run = None
        subcommand = self.config.get("subcommand")
        ckpt_path = subcommand and self.config[subcommand].get("ckpt_path")
        if not ckpt_path:
            return
        root = self.config[subcommand].trainer.default_root_dir or DEFAULT_ROOT
        if ckpt_path == "last":
            path, self._run, why = runs.last_checkpoint(root)
            rank_zero_info(f"--ckpt_path last: {why}")
        else:
            path = Path(ckpt_path)
            if not path.is_file():
                raise ValueError(
                    f"ckpt_path={ckpt_path!r} does not exist or is not a file; expected "
                    "a .ckpt written by fit, or 'last'"
                )
        checkpoint = read_lightning_checkpoint(path)
        defaults = checkpoint_defaults(checkpoint, self._chosen_model, self._chosen_data)
        self._subcommand_parsers[subcommand].set_defaults(defaults)
        super().parse_arguments(self.parser, self._args)
        self.config[subcommand]["ckpt_path"] = str(path)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, but an error raised while building the model or the data is raised
        as it is: in subclass mode jsonargparse wraps it in "does not validate against any of
        the Union subtypes", listing it among errors of types that were never asked for."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            if err.__cause__ is not None and "Union subtypes" in str(err):
                raise err.__cause__ from None
            raise

    def before_instantiate_classes(self) -> None:
        """Choose this run's folder and point checkpoints and outputs into it."""
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: flat
        root = config.trainer.default_root_dir or DEFAULT_ROOT
        if self._run is not None:  # resuming: the same run, logs of this part in a subfolder
            self._logs = runs.next_resumed_logs(self._run)
            warnings.filterwarnings(
                "ignore", message="Checkpoint directory .* exists and is not empty"
            )
        elif rank_zero_only.rank != 0 and os.environ.get(_RUN_ENV):
            self._run = Path(os.environ[_RUN_ENV])
            self._logs = self._run
        else:
            self._run = runs.new_run(root) if rank_zero_only.rank == 0 else Path(root) / "pending"
            self._logs = self._run
        os.environ[_RUN_ENV] = str(self._run)
        config.trainer.default_root_dir = str(self._logs)  # config.yaml, predictions
        config.checkpoint.dirpath = config.last_checkpoint.dirpath = str(self._run / "checkpoints")
        if self.subcommand != "fit":  # evaluation restores weights only, not fit's callbacks
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
        rank_zero_info(f"{self.subcommand}: run folder {runs.shown(self._run)[0]}")

    def instantiate_trainer(self, **kwargs):
        """Adds :func:`default_callbacks`, run-folder loggers and atomic checkpoint writes;
        checkpoint callbacks only for fit (evaluation writes none)."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = default_callbacks(config)
        extra = [
            self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys
        ]
        if self.subcommand == "fit":
            callbacks += [
                ExceptionCheckpoint(str(self._run / "checkpoints")),
                StopAllRanksOnSigterm(),
            ]
        else:
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
            config["enable_checkpointing"] = False
        self.trainer_defaults["callbacks"] = callbacks
        if config.get("logger") in (None, True):
            config["logger"] = run_loggers(self._logs)
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        return self._instantiate_trainer(config, extra)

    def after_fit(self) -> None:
        """The closing line names the run folder and only the checkpoints that exist."""
        folder = self._run / "checkpoints"
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        files = {"last": folder / runs.LAST, "best": Path(best) if best else None}
        files = {name: path for name, path in files.items() if path and path.is_file()}
        self._closing("fit finished", files, "no checkpoint written (no training epoch ended)")

    def after_validate(self) -> None:
        self._closing("validate finished", {"metrics": self._logs / "metrics.csv"})

    def after_test(self) -> None:
        self._closing("test finished", {"metrics": self._logs / "metrics.csv"})

    def after_predict(self) -> None:
        self._closing("predict finished", {})  # the writer has named its files

    @rank_zero_only
    def _closing(self, what: str, files: dict[str, Path], none: str = "") -> None:
        """``<what>: run folder X; name path; ...`` with only files that exist, their paths all
        relative to the working directory or all absolute (runs.shown)."""
        files = {name: path for name, path in files.items() if path.is_file()}
        run, *paths = runs.shown(self._run, *files.values())
        parts = [f"run folder {run}"] + [f"{n} {p}" for n, p in zip(files, paths)]
        rank_zero_info(f"{what}: {'; '.join(parts + ([none] if none and not files else []))}")


def export_main(argv: list[str]) -> None:
    from jsonargparse import CLI

    from .export import export

    target = CLI(export, args=argv, as_positional=False)
    if isinstance(target, Path):  # not for --help or --print_config
        (shown,) = runs.shown(target)
        what = sorted(p.name for p in target.iterdir()) if target.is_dir() else None
        print(f"export: wrote {shown}" + (f" ({', '.join(what)})" if what else ""), flush=True)


class _StopOnSigterm:
    """SIGTERM before (or after) Lightning's own handler is in place, e.g. while DDP starts:
    exit through an exception, so that Lightning's launcher stops the other ranks instead of
    leaving them waiting for a rank that is gone. While a Trainer runs, Lightning calls this
    after its own graceful handler: then it does nothing (fit stops at the next batch and
    writes on_exception.ckpt)."""

    def __call__(self, signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) is self:
            raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: process-wide settings live here, not at import time."""
    args = sys.argv[1:] if argv is None else argv
    torch.set_float32_matmul_precision("high")
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _StopOnSigterm())
    try:
        _run(argv, args)
    finally:  # called in-process (tests, notebooks): leave the caller's handler as it was
        signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None, args: list[str]) -> None:
    # LightningModule.configure_model only resolves the classes from the data (no sharding), and
    # EMAWeightAveraging calls it early on purpose: its warning about sharding does not apply
    warnings.filterwarnings("ignore", message=".*WeightAveraging doesn't support sharding.*")
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)"
    )  # Lightning on torch 2.13
    if args and args[0] == "export":
        return export_main(args[1:])
    if args and args[0] == "cross_validate":
        from .cross_validation import cross_validate

        cross_validate(args[1:])
        return None
    try:
        NatLightningCLI(
            L.LightningModule,
            L.LightningDataModule,
            task_args=args,
            trainer_defaults={"default_root_dir": DEFAULT_ROOT},
            seed_everything_default=42,
            args=argv,  # None reads sys.argv (passing both would warn)
        )
    except (
        SIGTERMException
    ):  # a SystemExit with code 0 in Lightning: a stopped run is not a success
        raise SystemExit(128 + signal.SIGTERM) from None
