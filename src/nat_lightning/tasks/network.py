"""The classifier's network: from a variant, a config or pretrained weights (a transformers
folder or Hub id, an original .pth, or a NatClassifier .ckpt), and the preprocessing that
pretrained source asks for."""

from __future__ import annotations

import logging
from typing import Any

from ..files import read_lightning_checkpoint as read_ckpt_file
from ..models import NatConfig, NatForImageClassification
from ..models.hub import resolve_pretrained

log = logging.getLogger(__name__)

DEFAULT_VARIANT = (
    "nat_pico"  # the quickstart's model, used when neither model nor pretrained is given
)
DEFAULT_NUM_CLASSES = (
    10  # the embedded digits; replaced by the data's classes once a datamodule is attached
)
# the fields that make two configs the same architecture (a variant name is checked against them)
ARCHITECTURE = (
    "embed_dim",
    "depths",
    "num_heads",
    "kernel_size",
    "dilations",
    "mlp_ratio",
    "layer_scale_init_value",
)


def resolve_config(model: str | NatConfig | dict[str, Any] | None) -> NatConfig | None:
    if model is None or isinstance(model, NatConfig):
        return model
    if isinstance(model, str):
        return NatConfig.from_variant(model)
    if isinstance(model, dict):
        return NatConfig.from_dict(model)
    raise ValueError(
        f"model must be a variant name, a NatConfig or a dict, got {type(model).__name__}"
    )


def check_variant(name: str, variant: NatConfig, loaded: NatConfig, pretrained: str) -> None:
    """A variant name given beside ``pretrained=`` must describe the checkpoint's architecture."""
    differ = {
        f: (getattr(variant, f), getattr(loaded, f))
        for f in ARCHITECTURE
        if getattr(variant, f) != getattr(loaded, f)
    }
    if differ:
        listing = ", ".join(f"{f}: {a} vs {b}" for f, (a, b) in differ.items())
        raise ValueError(
            f"model={name!r} does not match pretrained={pretrained!r} ({listing}); "
            "omit model= to take the checkpoint's config, or name its variant"
        )


def build_network(
    model, pretrained, num_classes, id2label, drop_path_rate, attention_backend
) -> NatForImageClassification:
    """The classifier network from a variant/config and optionally pretrained weights.

    Without ``num_classes``/``id2label`` the head is the pretrained one, or a provisional
    DEFAULT_NUM_CLASSES head that NatClassifier replaces by the datamodule's classes.
    """
    config = resolve_config(model)
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in id2label.items()}
        if num_classes is not None and num_classes != len(id2label):
            raise ValueError(f"id2label has {len(id2label)} entries but num_classes={num_classes}")
        num_classes = len(id2label)
    overrides = {"attention_backend": attention_backend}
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if pretrained is not None and str(pretrained).endswith(".ckpt"):
        network = from_lightning_checkpoint(pretrained, num_classes, id2label, overrides)
        if isinstance(model, str):
            check_variant(model, config, network.config, pretrained)
        return network
    if pretrained is not None:
        bare_file = str(pretrained).endswith((".pth", ".pt"))
        network = NatForImageClassification.from_pretrained(
            pretrained,
            config=config if (bare_file or not isinstance(model, str)) else None,
            num_labels=num_classes,
            id2label=id2label,
            **overrides,
        )
        if isinstance(model, str) and not bare_file:
            check_variant(model, config, network.config, pretrained)
        return network
    config = config or NatConfig.from_variant(DEFAULT_VARIANT)
    if num_classes is None:
        num_classes = (
            config.num_labels
            if isinstance(model, (NatConfig, dict)) and config.num_labels
            else DEFAULT_NUM_CLASSES
        )
    id2label = id2label or {i: str(i) for i in range(num_classes)}
    return NatForImageClassification(
        config.replace(num_labels=num_classes, id2label=id2label, **overrides)
    )


def read_lightning_checkpoint(path: str) -> dict:
    """A task's .ckpt with its network config and weights (``weights_only``: no pickled code
    runs; read once, by models.files)."""
    checkpoint = read_ckpt_file(path)
    if "model" not in (checkpoint.get("hyper_parameters") or {}) or "state_dict" not in checkpoint:
        raise ValueError(
            f"pretrained={path!r} is not a NatClassifier checkpoint: expected "
            "hyper_parameters.model and a state_dict, as fit writes them"
        )
    return checkpoint


def from_lightning_checkpoint(path, num_classes, id2label, overrides) -> NatForImageClassification:
    """The network of a NatClassifier checkpoint; a new head where the classes asked for differ."""
    checkpoint = read_lightning_checkpoint(path)
    config = NatConfig.from_dict(checkpoint["hyper_parameters"]["model"])
    state = {
        k.removeprefix("network."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("network.")
    }
    labels = {}
    if num_classes is not None and num_classes != config.num_labels:
        labels = {
            "num_labels": num_classes,
            "id2label": id2label or {i: str(i) for i in range(num_classes)},
        }
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        log.warning(
            "%s: the classification head is newly initialised for num_labels=%d (it has %d)",
            path,
            num_classes,
            config.num_labels,
        )
    elif id2label is not None:
        labels = {"id2label": id2label}
    network = NatForImageClassification(config.replace(**labels, **overrides))
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (labels.get("num_labels") and k.startswith("head."))]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit its own config: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}"
        )
    return network


def with_classes(
    network: NatForImageClassification, id2label: dict[int, str]
) -> NatForImageClassification:
    """The same backbone (shared, not copied) under a freshly initialised head for ``id2label``."""
    config = network.config.replace(num_labels=len(id2label), id2label=dict(id2label))
    fresh = NatForImageClassification(config)
    fresh.nat = network.nat
    return fresh


def pretrained_preprocessing(pretrained: str | None) -> dict | None:
    """image_size, crop_pct, mean and std from a pretrained folder's preprocessor_config.json."""
    if pretrained is None:
        return None
    if str(pretrained).endswith(".ckpt"):  # what its run recorded (older checkpoints: the data's)
        checkpoint = read_lightning_checkpoint(pretrained)
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        recorded = checkpoint["hyper_parameters"].get("preprocessing") or {
            k: data[k] for k in ("image_size", "crop_pct", "mean", "std") if data.get(k) is not None
        }
        return dict(recorded) or None
    from ..data.transforms import config_preprocessing

    folder = resolve_pretrained(pretrained)
    if not (folder / "preprocessor_config.json").is_file():
        return None
    values = config_preprocessing(folder)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
