"""Export a trained task's checkpoint (NatClassifier, NatSegmenter, ...): transformers-layout folder, ONNX,
or the Hub.

    nat-lightning export --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --output exported/digits
    nat-lightning export --ckpt_path ... --output model.onnx --format onnx
    nat-lightning export --ckpt_path ... --output exported/digits --push_to_hub me/nat-digits

Nothing is left behind on failure: outputs are built in a temporary path and moved into place,
files 0644 and folders 0755 whatever the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from .files import read_lightning_checkpoint


def load_checkpoint(ckpt_path: str):
    """The task (NatClassifier, NatSegmenter, ..., as the checkpoint was trained) and the raw
    checkpoint dict; a clear error for missing or corrupt files."""
    from .task_choice import DEFAULT_TASK, import_class, recorded_class

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist or is not a file")
    task = import_class(DEFAULT_TASK)  # named in the error when the file is unreadable
    try:
        checkpoint = read_lightning_checkpoint(path)
        task = import_class(recorded_class(checkpoint) or DEFAULT_TASK)
        model = task.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise ValueError(
            f"ckpt_path={ckpt_path!r} is not a readable {task.__name__} checkpoint: {err}"
        ) from err
    return model.eval(), checkpoint


def _scores(checkpoint: dict) -> str:
    """The best values the checkpoint's ModelCheckpoint callbacks recorded, as table rows."""
    scores = [
        (cb_state.get("monitor"), cb_state.get("best_model_score"))
        for name, cb_state in (checkpoint.get("callbacks") or {}).items()
        if isinstance(cb_state, dict)  # ModelCheckpoint's and its subclasses' (BestCheckpoint)
        and cb_state.get("monitor")
        and cb_state.get("best_model_score") is not None
    ]
    return "\n".join(f"| {m} | {float(s):.4f} |" for m, s in scores) or "| (none recorded) | |"


def model_card(model, checkpoint: dict) -> str:
    """README.md of an exported folder, from the task's ``card`` and the checkpoint."""
    card = model.card
    kind = "DiNAT" if model.backbone_config.dilations else "NAT"
    dataset = (checkpoint.get("datamodule_hyper_parameters") or {}).get("dataset")
    dataset = card.embedded if dataset is None else str(dataset)
    labels = ", ".join(f"`{v}`" for v in model.id2label.values())
    return f"""---
library_name: transformers
tags: [{card.tags}, nat_lightning, {kind.lower()}]
pipeline_tag: {card.pipeline}
---

# {card.title.format(kind=kind)}

Trained with [nat_lightning](https://github.com/) on **{dataset}**, {checkpoint.get("epoch", "?")} epochs
({checkpoint.get("global_step", "?")} optimizer steps).

Labels ({len(model.id2label)}): {labels}

| metric | value |
|---|---:|
{_scores(checkpoint)}

Load it with `nat_lightning.{card.ours}.from_pretrained(path)`, or with
transformers <= 4.40 and NATTEN <= 0.17 (`{card.theirs}`).
"""


def export(
    ckpt_path: str,
    output: str,
    format: Literal["hf", "onnx"] = "hf",
    overwrite: bool = False,
    image_size: int | None = None,
    opset: int = 17,
    push_to_hub: str | None = None,
    private: bool = True,
) -> Path:
    """Export a NatClassifier or NatSegmenter checkpoint.

    Args:
        ckpt_path: the Lightning checkpoint (.ckpt) to read.
        output: a folder (``hf``) or a ``.onnx`` file (``onnx``).
        format: ``hf`` = transformers layout (an UperNetForSemanticSegmentation folder for a
            segmenter) with preprocessor_config.json and a model card; ``onnx`` = an ONNX graph
            of the network (logits) for one fixed image size, torch attention backend
            (pip install "nat-lightning[onnx]").
        overwrite: replace ``output`` when it exists.
        image_size: input size for ONNX; by default the one the data module used (the
            segmenter's: its eval_size, square).
        opset: ONNX opset version.
        push_to_hub: a Hub repo id to upload the ``hf`` folder to (needs network and a token).
        private: create the Hub repo as private.
    """
    target = Path(output)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output={output!r} already exists; pass --overwrite true to replace it"
        )
    if push_to_hub and format != "hf":
        raise ValueError(f"push_to_hub needs format='hf', got {format=}")
    if format == "onnx":
        require_onnx()
    model, checkpoint = load_checkpoint(ckpt_path)
    if format == "onnx" and model.onnx_unsupported:
        raise ValueError(f"format='onnx': {model.onnx_unsupported}; export with format='hf'")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        if format == "hf":
            write_hf_folder(model, checkpoint, tmp)
            built = tmp
        else:
            built = tmp / target.name
            write_onnx(model, built, image_size or model.export_image_size(checkpoint), opset)
        _share_modes(built)
        _move_into_place(built, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        upload(target, push_to_hub, private)
    return target


def write_hf_folder(model, checkpoint: dict, folder: Path) -> None:
    model.save_pretrained(folder)
    config = model.preprocessor_config(checkpoint)
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
    (folder / "README.md").write_text(model_card(model, checkpoint))


def require_onnx() -> None:
    """torch.onnx.export writes through the ``onnx`` package, an optional dependency."""
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            'format="onnx" needs the onnx package: pip install "nat-lightning[onnx]"'
        ) from err


def write_onnx(model, path: Path, image_size: int, opset: int) -> None:
    network = model.network
    network.set_attention_backend("torch")  # NATTEN's kernels do not export
    dummy = torch.zeros(1, 3, image_size, image_size)
    fix_adaptive_pools(network, dummy)

    class Logits(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixel_values):
            return self.net(pixel_values).logits

    torch.onnx.export(
        Logits(network).eval(),
        (dummy,),
        str(path),
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


class FixedAdaptivePool(torch.nn.Module):
    """``nn.AdaptiveAvgPool2d`` for one known input size as two constant pooling matrices:
    ONNX's adaptive pooling needs the input size, which the exporter loses after neighbourhood
    attention's padding (UPerNet's pyramid pooling). Exact: the same windows, the same means."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]):
        super().__init__()
        self.register_buffer("rows", pooling_matrix(size_in[0], size_out[0]), persistent=False)
        self.register_buffer("cols", pooling_matrix(size_in[1], size_out[1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, s, s)
        return torch.matmul(torch.matmul(self.rows, x), self.cols.t())


def pooling_matrix(size: int, out: int) -> torch.Tensor:
    """(out, size): row i averages adaptive pooling's window i, [floor(i n/s), ceil((i+1) n/s))."""
    matrix = torch.zeros(out, size)
    for i in range(out):
        start, end = i * size // out, -(-(i + 1) * size // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def fix_adaptive_pools(network: torch.nn.Module, dummy: torch.Tensor) -> None:
    """Replace every ``nn.AdaptiveAvgPool2d`` by a FixedAdaptivePool for the input size it sees
    on ``dummy`` (an export is for one image size)."""
    pools = {n: m for n, m in network.named_modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)}
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(i[0].shape[-2:])))
        for n, m in pools.items()
    ]
    with torch.no_grad():
        network.eval()(dummy)
    for hook in hooks:
        hook.remove()
    for name, pool in pools.items():
        out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        parent, _, attr = name.rpartition(".")
        setattr(network.get_submodule(parent), attr, FixedAdaptivePool(sizes[name], out))


def _share_modes(path: Path) -> None:
    """Files 0644 and folders 0755, as a plain copy would be: mkdtemp makes its folder 0700."""
    if path.is_dir():
        path.chmod(0o755)
        for child in path.iterdir():
            _share_modes(child)
    else:
        path.chmod(0o644)


def _move_into_place(built: Path, target: Path) -> None:
    if target.exists():  # only reached with overwrite=True
        old = target.with_name(f".{target.name}.old")
        os.replace(target, old)
        os.replace(built, target)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(built, target)


def upload(folder: Path, repo_id: str, private: bool) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    except Exception as err:  # offline mode, HTTP errors, no network, no token
        raise RuntimeError(
            f"could not push {folder} to the Hub repo {repo_id!r}: {err}. The export itself is complete "
            "in the output folder; check the network, HF_HUB_OFFLINE and `huggingface-cli login`, then retry."
        ) from err
