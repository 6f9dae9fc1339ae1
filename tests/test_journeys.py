"""The README's commands as a user runs them: ``python -m nat_lightning ...`` in a subprocess,
default callbacks and progress bar on, each under a hard timeout that kills its process group."""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from tests.runner import QUICK, cli, last_value, load, metrics


class SigkillAt(L.Callback):
    """A hard kill (nothing saved) in the second batch of epoch 1."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One quickstart root, fitted twice: version_0 and version_1."""
    root = tmp_path_factory.mktemp("runs")
    for _ in range(2):
        out = cli("fit", *QUICK, "--trainer.default_root_dir", str(root))
    (root.parent / "fit_output.txt").write_text(out)
    return root


def test_a_fit_prints_its_run_folder_and_none_of_lightnings_false_alarms(root):
    out = (root.parent / "fit_output.txt").read_text()
    assert f"run folder {root / 'version_1'}" in out and "fit finished" in out
    # the closing line: the run, last and best, each an absolute path that exists (root is not
    # under the working directory)
    closing = [line for line in out.splitlines() if line.startswith("fit finished: ")][-1]
    parts = dict(part.split(" ", 1) for part in closing.removeprefix("fit finished: ").split("; "))
    assert parts.keys() == {"run", "last", "best"}, closing
    assert parts["run"] == f"folder {root / 'version_1'}"
    assert parts["last"] == str(root / "version_1" / "checkpoints" / "last.ckpt")
    assert (
        Path(parts["best"]).is_file()
        and Path(parts["best"]).parent == root / "version_1" / "checkpoints"
    )
    for alarm in (
        "args and command line arguments",
        "was called without a model",
        "Restoring states",
    ):
        assert alarm not in out
    flops = [line for line in out.splitlines() if "Total FLOPs" in line]
    assert flops and "Total FLOPs: 0 " not in flops[0] + " "


def test_a_second_fit_starts_a_fresh_run_and_leaves_the_first_alone(root):
    v0, v1 = root / "version_0", root / "version_1"
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    a, b = load(v0 / "checkpoints" / "last.ckpt"), load(v1 / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6  # the second run trained from scratch
    for key, value in a["state_dict"].items():  # seeded: the same run again, not a continuation
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(metrics(v0)) == len(metrics(v1))


def test_kill_9_then_ckpt_path_last_resumes_the_newest_run_bit_identically(root, tmp_path):
    killed = tmp_path / "killed"
    cli(
        "fit",
        *QUICK,
        "--trainer.default_root_dir",
        str(killed),
        "--trainer.callbacks+=tests.test_journeys.SigkillAt",
        expect=-signal.SIGKILL,
    )
    cut = load(killed / "version_0" / "checkpoints" / "last.ckpt")
    assert cut["global_step"] == 3 and cut["epoch"] == 0  # written at the end of epoch 0
    out = cli("fit", *QUICK, "--trainer.default_root_dir", str(killed), "--ckpt_path", "last")
    assert "resuming" in out and "version_0" in out
    assert sorted(p.name for p in killed.iterdir()) == ["version_0"]
    resumed = load(killed / "version_0" / "checkpoints" / "last.ckpt")
    full = load(root / "version_0" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == full["global_step"] == 6
    assert resumed["epoch"] == full["epoch"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for key, value in full["optimizer_states"][0]["state"][0].items():  # AdamW's moments too
        assert torch.equal(value, resumed["optimizer_states"][0]["state"][0][key]), key
    assert (
        killed / "version_0" / "resumed_1" / "metrics.csv"
    ).is_file()  # the first part's logs kept
    assert metrics(killed / "version_0")


def test_a_failed_start_leaves_nothing_to_resume_and_last_continues_the_trained_run(root, tmp_path):
    """A fit that dies before its first step (here AdamW refusing lr=-1) writes no checkpoint and
    does not suggest resuming; ``--ckpt_path last`` then passes over it, and over a newer run
    holding a step-0 on_exception.ckpt (as earlier versions wrote), to the run that trained."""
    runs = tmp_path / "runs"
    shutil.copytree(root / "version_0", runs / "version_0")
    out = cli("fit", *QUICK, "--model.lr", "-1", "--trainer.default_root_dir", str(runs), expect=1)
    assert "before the first training step: no checkpoint written" in out, out[-3000:]
    assert "resume with" not in out and "Invalid learning rate" in out
    assert not list((runs / "version_1").rglob("*.ckpt"))
    (runs / "version_2" / "checkpoints").mkdir(parents=True)
    untrained = {"global_step": 0, "epoch": 0, "state_dict": {}}
    torch.save(untrained, runs / "version_2" / "checkpoints" / "on_exception.ckpt")

    out = cli(
        "fit",
        *QUICK,
        "--trainer.max_epochs",
        "3",
        "--ckpt_path",
        "last",
        "--trainer.default_root_dir",
        str(runs),
    )
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    assert (
        f"--ckpt_path last: resuming {runs / 'version_0'} from {last} (step 6); passed over newer "
        "runs that had not trained: version_2 (on_exception.ckpt at step 0), version_1 (no "
        "checkpoint)"
    ) in out
    assert load(last)["global_step"] == 9  # epochs 0-1 restored, epoch 2 trained
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1", "version_2"]


def test_max_epochs_0_names_no_checkpoint_that_does_not_exist(tmp_path):
    out = cli(
        "fit", *QUICK, "--trainer.max_epochs", "0", "--trainer.default_root_dir", str(tmp_path)
    )
    closing = [line for line in out.splitlines() if line.startswith("fit finished")]
    assert closing == [
        f"fit finished: run folder {tmp_path / 'version_0'}; no checkpoint written "
        "(no training epoch ended)"
    ], out[-2000:]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_one_class_is_refused_with_the_fix(tmp_path):
    out = cli(
        "fit",
        *QUICK,
        "--model.num_classes",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        expect=1,
    )
    last = out.strip().splitlines()[-1]
    assert last.startswith("ValueError: num_classes=1: a classifier needs at least 2 classes"), out[
        -2000:
    ]
    assert "num_classes=2" in last and "multi-label" in last


def test_last_ckpt_holds_the_final_epoch_not_the_best(tmp_path):
    # the top-k checkpoint is written only at epoch 1 (every 2nd epoch); training ends at epoch 2
    cli(
        "fit",
        *QUICK,
        "--trainer.max_epochs",
        "3",
        "--checkpoint.every_n_epochs",
        "2",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    folder = tmp_path / "version_0" / "checkpoints"
    assert [p.name for p in folder.glob("epoch*.ckpt")] == [
        next(folder.glob("epoch001-*.ckpt")).name
    ]
    last = load(folder / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 3  # one batch an epoch


def test_validate_and_predict_from_the_checkpoint_alone(root, tmp_path):
    """No --config: the checkpoint's model, 32 px crop, mean/std 0.5 and dataset."""
    run = root / "version_0"
    out = cli(
        "validate",
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir",
        str(tmp_path / "eval"),
        "--trainer.limit_val_batches",
        "2",
    )
    evaluated = tmp_path / "eval" / "version_0"
    assert (
        f"validate finished: run folder {evaluated}; metrics {evaluated / 'metrics.csv'}\n" in out
    )
    expected = last_value(metrics(run), "val/acc1")
    assert last_value(metrics(tmp_path / "eval" / "version_0"), "val/acc1") == pytest.approx(
        expected, abs=1e-6
    )
    assert expected > 0.15  # above chance (0.1): a model, not noise, is compared

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(images / f"good{i}.png")
    (images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = cli(
        "predict",
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir",
        str(tmp_path / "pred"),
        "--data.predict_paths",
        str(images),
    )
    written = tmp_path / "pred" / "version_0" / "predictions.csv"
    assert f"predict: wrote 3 row(s) to {written} (1 undecodable: no prediction" in out
    assert f"predict finished: run folder {written.parent}\n" in out
    rows = list(csv.DictReader((tmp_path / "pred" / "version_0" / "predictions.csv").open()))
    assert [Path(r["id"]).name for r in rows] == ["bad.png", "good0.png", "good1.png"]
    assert rows[0]["error"] and not rows[0]["label_1"]
    assert all(r["label_1"] in [str(d) for d in range(10)] and not r["error"] for r in rows[1:])

    only_bad = corrupt_folder(tmp_path / "only_bad", ["x.png", "y.png"], empty=True)
    out = cli(
        "predict",
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
        "--trainer.default_root_dir",
        str(tmp_path / "pred_bad"),
        "--data.predict_paths",
        str(only_bad),
        expect=1,
    )
    rows = list(csv.DictReader((tmp_path / "pred_bad" / "version_0" / "predictions.csv").open()))
    assert [(Path(r["id"]).name, bool(r["error"])) for r in rows] == [
        ("x.png", True),
        ("y.png", True),
    ]
    assert "2 of 2 images in predict" in out and "x.png" in out


def three_class_folder(folder: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            pixels[..., c] += 180
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


def test_a_three_class_fine_tune_predicts_with_the_eval_config_and_names_a_class_mismatch(tmp_path):
    data = three_class_folder(tmp_path / "colours")
    cli(
        "fit",
        *QUICK,
        "--trainer.max_epochs",
        "1",
        "--data.dataset",
        str(data),
        "--data.batch_size",
        "8",
        "--trainer.default_root_dir",
        str(tmp_path / "ft"),
    )
    ckpt = tmp_path / "ft" / "version_0" / "checkpoints" / "last.ckpt"
    assert load(ckpt)["hyper_parameters"]["id2label"] == {0: "blue", 1: "green", 2: "red"}
    cli(
        "predict",
        "--config",
        "configs/eval_digits.yaml",
        "--ckpt_path",
        str(ckpt),
        "--data.predict_paths",
        str(data / "red"),
        "--trainer.default_root_dir",
        str(tmp_path / "pred"),
    )
    rows = list(csv.DictReader((tmp_path / "pred" / "version_0" / "predictions.csv").open()))
    assert len(rows) == 12 and {r["label_1"] for r in rows} <= {"red", "green", "blue"}
    out = cli(
        "validate",
        "--ckpt_path",
        str(ckpt),
        "--data.dataset",
        "null",
        "--trainer.default_root_dir",
        str(tmp_path / "val"),
        expect=1,
    )
    assert "head has 3 classes but the data has 10" in out


def test_max_steps_sizes_the_warmup_in_epochs_of_the_data(tmp_path):
    # 3 batches an epoch, warmup_epochs 1: the LR rises for 3 steps and peaks at model.lr
    # (no validation: only the schedule is checked)
    cli(
        "fit",
        *QUICK,
        "--trainer.max_epochs",
        "-1",
        "--trainer.max_steps",
        "7",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    rows = metrics(tmp_path / "version_0")
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]
    assert len(lrs) == 7
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak == 3 and lrs[peak] == pytest.approx(2e-3)
    assert lrs[:3] == pytest.approx([2e-3 * (s + 1) / 4 for s in range(3)])
    assert lrs[-1] < lrs[peak]


def corrupt_folder(folder: Path, names: list[str], empty: bool = False) -> Path:
    """PNG files cut short after their header, or of zero bytes."""
    data = b"" if empty else b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("empty", [False, True], ids=["truncated", "zero-byte"])
def test_an_undecodable_dataset_stops_with_an_error_naming_files(tmp_path, empty):
    names = [f"{c}/{i}.png" for c in ("a", "b") for i in range(4)]
    data = corrupt_folder(tmp_path / "bad", names, empty)
    out = cli(
        "fit",
        *QUICK,
        "--data.dataset",
        str(data),
        "--data.batch_size",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        expect=1,
    )
    assert "could not be decoded" in out and f"{data}/" in out and "max_skipped_fraction" in out
    assert "Traceback" not in out.split("could not be decoded")[-1]  # the error is the last word


def test_an_all_undecodable_batch_is_skipped_and_counted(tmp_path):
    data = tmp_path / "colours"
    three_class_folder(data / "train", per_class=6)
    three_class_folder(data / "validation", per_class=2)
    # the first validation batch (rows sorted by path, batch_size 2) is both of these
    corrupt_folder(data / "validation", ["blue/0000_bad.png", "blue/0001_bad.png"])
    out = cli(
        "fit",
        *QUICK,
        "--trainer.max_epochs",
        "1",
        "--data.dataset",
        str(data),
        "--data.batch_size",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
    )
    rows = metrics(tmp_path / "runs" / "version_0")
    assert last_value(rows, "data/skipped_validate") == 2, out[-3000:]
    assert last_value(rows, "data/skipped_train") == 0
    assert 0 <= last_value(rows, "val/acc1") <= 1


def data_settings(ckpt: Path) -> dict:
    data = load(ckpt)["datamodule_hyper_parameters"]
    return {k: data[k] for k in ("image_size", "crop_pct", "mean", "std")}


def test_fine_tuning_takes_the_pretrained_preprocessing_unless_set(root, tmp_path):
    """From an exported folder or a checkpoint: its 32 px, crop 1.0, mean/std 0.5 (not 224 px and
    ImageNet's); an explicit --data value wins."""
    source = root / "version_0" / "checkpoints" / "last.ckpt"
    folder = tmp_path / "exported"
    out = cli("export", "--ckpt_path", str(source), "--output", str(folder))
    assert (
        f"export: wrote {folder} (README.md, config.json, model.safetensors, preprocessor_config.json)"
        in out
    )
    data = three_class_folder(tmp_path / "colours", per_class=4)
    tiny = [
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--data.dataset",
        str(data),
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
    ]
    quickstart = {"image_size": 32, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
    for i, (pretrained, extra, expected) in enumerate(
        [
            (folder, [], quickstart),
            (
                folder,
                ["--data.image_size", "48", "--data.std", "[0.25,0.25,0.25]"],
                {**quickstart, "image_size": 48, "std": [0.25] * 3},
            ),
            (source, [], quickstart),
        ]
    ):
        cli(
            "fit",
            "--model.pretrained",
            str(pretrained),
            *tiny,
            *extra,
            "--trainer.default_root_dir",
            str(tmp_path / "ft"),
        )
        ckpt = tmp_path / "ft" / f"version_{i}" / "checkpoints" / "last.ckpt"
        got = data_settings(ckpt)
        assert {**got, "mean": list(got["mean"]), "std": list(got["std"])} == expected, (
            pretrained,
            extra,
        )
        assert load(ckpt)["hyper_parameters"]["num_classes"] == 3  # the data's classes, a new head
