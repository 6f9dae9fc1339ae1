"""The real CLI: every config parses, fit/resume/validate/predict/export run, bad input is named."""

import csv
import json
import shutil
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from nat_lightning import NatForImageClassification
from nat_lightning.cli import main
from nat_lightning.export import export, load_checkpoint
from nat_lightning.runs import runs_in

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
QUICK = [
    "--config",
    "configs/quickstart.yaml",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


SEGMENTATION = [c for c in CONFIGS if "NatSegmenter" in c.read_text()]


@pytest.mark.parametrize("config", SEGMENTATION, ids=lambda p: p.name)
def test_segmentation_configs_choose_the_segmenter_its_data_metric_and_writer(config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "nat_lightning.NatSegmenter"
    assert printed["data"]["class_path"] == "nat_lightning.HFSegmentationDataModule"
    assert printed["checkpoint"]["monitor"] == "val/miou"
    assert "overlay" in printed["prediction"]  # MaskWriter's, not the classes CSV's


def test_seven_segmentation_configs():
    names = {c.name for c in SEGMENTATION}
    assert names == {"seg_quickstart.yaml", "finetune_sidewalk.yaml"} | {
        f"ade20k_upernet_{v}.yaml"
        for v in ("nat_mini", "nat_tiny", "nat_small", "nat_base", "dinat_tiny")
    }


UNIVERSAL = [c for c in CONFIGS if "NatUniversalSegmenter" in c.read_text()]


@pytest.mark.parametrize("config", UNIVERSAL, ids=lambda p: p.name)
def test_universal_configs_choose_the_task_its_data_metric_and_writer(config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "nat_lightning.NatUniversalSegmenter"
    assert printed["data"]["class_path"] == "nat_lightning.HFPanopticDataModule"
    assert printed["checkpoint"]["monitor"] == "val/pq"  # (val/miou once semantic data is read)
    assert printed["prediction"]["output_dir"] == "panoptic"  # PanopticWriter's


def test_six_universal_configs():
    assert {c.name for c in UNIVERSAL} == {
        "universal_quickstart.yaml",
        "coco_panoptic_mask2former_dinat_large.yaml",
        "ade20k_panoptic_mask2former_dinat_large.yaml",
        "ade20k_semantic_mask2former_dinat_large.yaml",
        "cityscapes_semantic_mask2former_dinat_large.yaml",
        "ade20k_oneformer_dinat_large.yaml",
    }


def test_a_misspelt_key_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/quickstart.yaml", "--model.learning_rate", "0.1"])
    assert "learning_rate" in capsys.readouterr().err


def fit(tmp_path, *extra):
    """Fit in-process; the checkpoints folder of the run it wrote (the newest under tmp_path)."""
    main(["fit", *QUICK, "--trainer.default_root_dir", str(tmp_path), *extra])
    return runs_in(tmp_path)[-1] / "checkpoints"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    Path.cwd()
    import os

    os.chdir(Path(__file__).resolve().parents[1])
    ckpts = fit(root, "--trainer.max_epochs", "2")
    return root, ckpts / "last.ckpt"


def test_fit_writes_best_and_last_checkpoints_and_csv_logs(trained):
    root, last = trained
    names = sorted(p.name for p in last.parent.glob("*.ckpt"))
    assert "last.ckpt" in names and any(n.startswith("epoch") for n in names)
    metrics = list(root.glob("version_*/metrics.csv"))
    assert metrics and "val/acc1" in metrics[0].read_text().splitlines()[0]


class KillMidEpoch(L.Callback):
    """Interrupts fit like Ctrl-C in the middle of epoch 1."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A root holding one fit stopped by Ctrl-C in epoch 1; each test works on a copy
    (``interrupted_fit``). Resuming after a hard kill is tests/test_journeys.py's kill -9 journey."""
    root = tmp_path_factory.mktemp("interrupted")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown on Ctrl-C
            fit(
                root,
                "--trainer.max_epochs",
                "2",
                "--trainer.callbacks+=tests.test_cli.KillMidEpoch",
            )
    finally:
        signal.signal(signal.SIGINT, handler)
    return root


def interrupted_fit(interrupted, root):
    """A copy of the interrupted root at ``root``; the checkpoints folder of its run."""
    shutil.copytree(interrupted, root, dirs_exist_ok=True)
    return runs_in(root)[-1] / "checkpoints"


def test_ctrl_c_writes_a_checkpoint_that_resumes(interrupted, tmp_path):
    cut = interrupted_fit(interrupted, tmp_path)
    state = torch.load(cut / "on_exception.ckpt", weights_only=True)
    assert state["global_step"] == 4  # 3 steps of epoch 0, 1 of epoch 1
    fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert torch.load(cut / "last.ckpt", weights_only=True)["global_step"] == 6
    assert cut.parent.name == "version_0" and (cut.parent / "resumed_1" / "metrics.csv").is_file()


def test_a_fit_after_a_crash_starts_afresh_even_with_another_model(interrupted, tmp_path):
    """Lightning resumes from on_exception.ckpt on its own when OnExceptionCheckpoint is used;
    here a plain fit never does: a new run, even with a network whose weights would not load."""
    interrupted_fit(interrupted, tmp_path)
    other = '{"embed_dim": 16, "depths": [1], "num_heads": [1], "kernel_size": 3}'  # not nat_pico
    fresh = fit(
        tmp_path,
        "--trainer.max_epochs",
        "1",
        "--model.model",
        other,
        "--data.image_size",
        "16",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "0",
    )
    assert fresh.parent.name == "version_1"
    state = torch.load(fresh / "last.ckpt", weights_only=True)
    assert state["global_step"] == 1 and state["hyper_parameters"]["model"]["embed_dim"] == 16


def test_validate_and_predict_from_a_checkpoint(trained, tmp_path):
    _, last = trained
    main(
        [
            "validate",
            "--config",
            "configs/eval_digits.yaml",
            "--ckpt_path",
            str(last),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(images / f"img{i}.png")
    main(
        [
            "predict",
            "--config",
            "configs/eval_digits.yaml",
            "--ckpt_path",
            str(last),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--data.predict_paths",
            str(images),
        ]
    )
    rows = list(csv.reader((runs_in(tmp_path)[-1] / "predictions.csv").open()))
    assert rows[0][:2] == ["id", "label_1"] and len(rows) == 4
    assert rows[1][0].endswith("img0.png")
    probs = [float(p) for p in rows[1][6:11]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_export_transformers_folder(trained, tmp_path):
    _, last = trained
    out = tmp_path / "exported"
    main(["export", "--ckpt_path", str(last), "--output", str(out)])
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32} and pre["image_mean"] == [0.5, 0.5, 0.5]
    assert "val/acc1" in (out / "README.md").read_text()
    model, _ = load_checkpoint(str(last))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            NatForImageClassification.from_pretrained(out).eval()(x).logits, model(x)
        )
    with pytest.raises(FileExistsError, match="already exists.*--overwrite"):
        export(str(last), str(out))
    export(str(last), str(out), overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_onnx_matches_pytorch(trained, tmp_path):
    import onnxruntime

    _, last = trained
    path = export(str(last), str(tmp_path / "model.onnx"), format="onnx")
    session = onnxruntime.InferenceSession(str(path))
    x = torch.randn(3, 3, 32, 32)
    got = session.run(None, {"pixel_values": x.numpy()})[0]
    model, _ = load_checkpoint(str(last))
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_export_errors_leave_nothing_behind(trained, tmp_path):
    _, last = trained
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "out"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable NatClassifier checkpoint"):
        export(str(corrupt), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.ckpt"]


def test_push_to_hub_offline_fails_clearly_after_a_complete_export(trained, tmp_path, monkeypatch):
    _, last = trained
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="could not push .* to the Hub repo 'me/nat-digits'"):
        export(str(last), str(tmp_path / "hub"), push_to_hub="me/nat-digits")
    assert (tmp_path / "hub" / "model.safetensors").exists()


def test_the_ddp_config_sets_a_collective_timeout(tmp_path):
    """A rank that dies or hangs fails the run after 5 minutes instead of hanging it forever."""
    from datetime import timedelta

    from nat_lightning.cli import NatLightningCLI
    from nat_lightning.data import HFImageDataModule
    from nat_lightning.tasks import NatClassifier

    cli = NatLightningCLI(
        NatClassifier,
        HFImageDataModule,
        run=False,
        args=[
            "--config",
            "configs/ddp_gpus.yaml",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--model.model",
            "nat_pico",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
    )
    assert cli.trainer.strategy._timeout == timedelta(minutes=5)


def test_ckpt_path_last_without_a_run_names_the_root(tmp_path):
    with pytest.raises(
        ValueError, match="ckpt_path='last': no run under default_root_dir=.*runs: none"
    ):
        main(["fit", *QUICK, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])
    with pytest.raises(ValueError, match="ckpt_path='nowhere.ckpt' does not exist"):
        main(
            ["validate", "--ckpt_path", "nowhere.ckpt", "--trainer.default_root_dir", str(tmp_path)]
        )
