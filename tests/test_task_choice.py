"""task_choice: which LightningModule and data module a command line picks, before parsing."""

import pytest
import torch

from nat_lightning import NatClassifier, NatSegmenter, NatUniversalSegmenter
from nat_lightning.task_choice import (
    chosen_classes,
    import_class,
    init_arguments,
    known_tasks,
    task_of,
)
from nat_lightning.tasks.base import NatTask

CLASSIFY = ("nat_lightning.NatClassifier", None)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_the_classifier_without_any_choice():
    assert chosen_classes(["fit", "--trainer.max_epochs", "1"]) == CLASSIFY
    assert chosen_classes(["fit", "--config", "configs/quickstart.yaml"]) == CLASSIFY


def test_yaml_then_command_line_later_wins(tmp_path):
    seg = write(
        tmp_path / "seg.yaml",
        "model:\n  class_path: nat_lightning.NatSegmenter\ndata:\n  class_path: my.Data\n",
    )
    assert chosen_classes(["fit", "--config", seg]) == ("nat_lightning.NatSegmenter", "my.Data")
    assert (
        chosen_classes(["fit", "--config", seg, "--model", "NatClassifier"])[0] == "NatClassifier"
    )
    assert chosen_classes(["fit", "--model=NatSegmenter", "--model.lr", "1"])[0] == "NatSegmenter"
    assert chosen_classes(["fit", "--model", "{class_path: NatSegmenter}"])[0] == "NatSegmenter"


def test_a_checkpoint_names_its_class_unless_the_command_line_does(tmp_path):
    recorded = tmp_path / "cli.ckpt"
    torch.save(
        {"hyper_parameters": {"_class_path": "nat_lightning.NatSegmenter", "lr": 1.0}}, recorded
    )
    assert (
        chosen_classes(["validate", "--ckpt_path", str(recorded)])[0]
        == "nat_lightning.NatSegmenter"
    )
    assert (
        chosen_classes(["validate", "--ckpt_path", str(recorded), "--model", "NatClassifier"])[0]
        == "NatClassifier"
    )
    # Trainer.fit(NatSegmenter()) records no class path: its arguments tell
    bare = tmp_path / "bare.ckpt"
    torch.save({"hyper_parameters": {"inference": "slide", "auxiliary_weight": 0.4}}, bare)
    assert chosen_classes(["validate", "--ckpt_path", str(bare)])[0] == "nat_lightning.NatSegmenter"
    torch.save({"hyper_parameters": {"label_smoothing": 0.1}}, bare)
    assert chosen_classes(["validate", "--ckpt_path", str(bare)]) == CLASSIFY
    torch.save({"hyper_parameters": {"architecture": "mask2former", "heads": {}}}, bare)
    chosen = chosen_classes(["validate", "--ckpt_path", str(bare)])[0]
    assert chosen == "nat_lightning.NatUniversalSegmenter"


def test_tasks_bring_their_data_and_metric():
    assert task_of("NatSegmenter").data_class == "nat_lightning.HFSegmentationDataModule"
    assert task_of("nat_lightning.tasks.classifier.NatClassifier").monitor == "val/acc1"
    assert task_of("lightning.pytorch.demos.boring_classes.BoringModel") is None
    assert task_of("NatUniversalSegmenter").data_class == "nat_lightning.HFPanopticDataModule"
    assert {NatClassifier, NatSegmenter, NatUniversalSegmenter} <= set(known_tasks())
    for task in known_tasks():
        import_class(task.data_class), import_class(task.writer_class)
    with pytest.raises(ValueError, match="model class 'NoSuchTask' cannot be imported"):
        task_of("NoSuchTask")


def test_a_task_states_what_the_cli_and_export_need():
    """The contract is code: a task without its class attributes cannot be defined, and one
    without the abstract methods cannot be built."""
    methods = (
        "backbone",
        "backbone_config",
        "_build_network",
        "_use_network",
        "_adopt_classes",
        "_training_loss",
        "_evaluate",
        "_predict",
        "_log_epoch_metrics",
        "_param_groups",
        "_lr_scheduler",
        "_training_flops",
        "preprocessor_config",
        "export_image_size",
    )
    assert NatTask.__abstractmethods__ == set(methods)
    defined = {name: (lambda self, *args: None) for name in methods}
    with pytest.raises(
        TypeError,
        match=r"task Incomplete must set the class attributes "
        r"\['monitor', 'checkpoint_filename', 'data_class', 'writer_class', 'card'\]",
    ):
        type("Incomplete", (NatTask,), defined)
    with pytest.raises(TypeError, match="Can't instantiate abstract class Half"):
        type("Half", (NatTask,), {})()


@pytest.mark.parametrize("task", [NatClassifier, NatSegmenter, NatUniversalSegmenter])
def test_a_task_declares_only_its_own_arguments_and_takes_the_shared_ones(task):
    """NatTask declares what every task takes; a task's own __init__ lists only its own arguments
    and those whose defaults differ, and passes the rest on (jsonargparse follows **kwargs)."""
    import inspect

    shared = [n for n in inspect.signature(NatTask.__init__).parameters if n != "self"]
    own = [n for n in inspect.signature(task.__init__).parameters if n not in ("self", "kwargs")]
    differing = set() if task is NatClassifier else {"lr", "weight_decay", "min_lr"}
    assert set(own) & set(shared) == differing
    bound = {NatClassifier: 11, NatSegmenter: 19, NatUniversalSegmenter: 15}[task]
    assert len(shared) == 20 and len(own) <= bound
    hparams = task(lr=0.5).hparams  # an argument of the base, given to the task
    assert set(shared) | set(own) == set(hparams) and hparams.lr == 0.5
    assert init_arguments(task) == own + [n for n in shared if n not in own]
