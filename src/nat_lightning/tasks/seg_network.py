"""The segmenter's network: UPerNet on a NAT/DiNAT backbone, from a backbone variant or config,
and optionally pretrained weights:

- a transformers UperNet folder or Hub id, or a NatSegmenter ``.ckpt``: the whole network;
- a classification checkpoint (a transformers NAT/DiNAT folder or Hub id, an original SHI-Labs
  ``.pth``, a NatClassifier ``.ckpt``): the backbone, under fresh heads.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..data.shapes import SHAPES_CLASSES
from ..models import NatConfig, NatForSemanticSegmentation, UperNetConfig
from ..models.hub import resolve_pretrained
from ..models.pretrained import read_checkpoint
from .network import check_variant, read_lightning_checkpoint, resolve_config

log = logging.getLogger(__name__)

# the embedded shapes data's model, used when neither model nor pretrained is given: small enough
# to train in about a minute on two CPU cores at 64 px
DEFAULT_BACKBONE = NatConfig(
    embed_dim=32, depths=[1, 1, 2, 1], num_heads=[2, 4, 8, 16], kernel_size=5, mlp_ratio=2.0
)
DEFAULT_HEAD = {"hidden_size": 64, "auxiliary_channels": 32}  # with DEFAULT_BACKBONE only
# the embedded shapes' classes; replaced by the datamodule's once one is attached
DEFAULT_ID2LABEL = dict(enumerate(SHAPES_CLASSES))
# NatSegmenter's head arguments -> the UperNetConfig fields they set
HEAD_ARGS = {
    "hidden_size": "hidden_size",
    "pool_scales": "pool_scales",
    "use_auxiliary_head": "use_auxiliary_head",
    "auxiliary_weight": "auxiliary_loss_weight",
    "auxiliary_channels": "auxiliary_channels",
    "auxiliary_num_convs": "auxiliary_num_convs",
    "auxiliary_concat_input": "auxiliary_concat_input",
}


def build_segmentation_network(
    model: str | NatConfig | dict[str, Any] | None,
    pretrained: str | None,
    num_classes: int | None,
    id2label: dict[int, str] | None,
    head: dict[str, Any],
    backbone_overrides: dict[str, Any],
) -> NatForSemanticSegmentation:
    """The network from a backbone variant/config and optionally pretrained weights.

    ``head`` holds the UperNetConfig head fields that were given (the others are the pretrained
    UperNet's, else the defaults); ``backbone_overrides`` NatConfig fields such as
    ``attention_backend`` and ``drop_path_rate``. Without ``num_classes``/``id2label`` the
    classes are the pretrained UperNet's, else the embedded shapes' (DEFAULT_ID2LABEL), until a
    datamodule's replace them.
    """
    num_classes, id2label = _labels(num_classes, id2label)
    source = None if pretrained is None else str(pretrained)
    if source is not None and source.endswith(".ckpt"):
        return _from_lightning_checkpoint(
            source, model, num_classes, id2label, head, backbone_overrides
        )
    if source is not None and not source.endswith((".pth", ".pt")):
        folder = resolve_pretrained(source)
        if _model_type(folder) == "upernet":
            return _from_upernet(source, model, num_classes, id2label, head, backbone_overrides)
        backbone = NatConfig.from_pretrained_dir(folder)
        return _on_backbone(
            source, source, model, backbone, num_classes, id2label, head, backbone_overrides
        )
    if source is not None and model is None:
        raise ValueError(
            f"pretrained={source!r} is a bare state dict (an original .pth) without a config: "
            "pass its variant as model=, e.g. model='nat_mini'"
        )
    backbone = resolve_config(model) or DEFAULT_BACKBONE
    if model is None:
        head = {**DEFAULT_HEAD, **head}
    config = segmentation_config(backbone, num_classes, id2label, head, backbone_overrides)
    if source is None:
        return NatForSemanticSegmentation(config)
    return NatForSemanticSegmentation.from_backbone(source, config)


def segmentation_config(
    backbone: NatConfig, num_classes, id2label, head: dict, backbone_overrides: dict
) -> UperNetConfig:
    """UperNetConfig on ``backbone`` with all its stages as outputs."""
    backbone = backbone.replace(out_features=backbone.stage_names[1:], **backbone_overrides)
    if num_classes is None:
        num_classes, id2label = len(DEFAULT_ID2LABEL), DEFAULT_ID2LABEL
    id2label = id2label or {i: str(i) for i in range(num_classes)}
    return UperNetConfig(backbone=backbone, num_labels=num_classes, id2label=id2label, **head)


def _from_lightning_checkpoint(source, model, num_classes, id2label, head, overrides):
    """A NatSegmenter checkpoint's whole network, or a NatClassifier checkpoint's backbone."""
    checkpoint = read_lightning_checkpoint(source)
    if any(k.startswith("network.decode_head.") for k in checkpoint["state_dict"]):
        return _from_segmenter_checkpoint(
            checkpoint, source, model, num_classes, id2label, head, overrides
        )
    backbone = NatConfig.from_dict(checkpoint["hyper_parameters"]["model"])
    weights = {
        k.removeprefix("network."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("network.")
    }
    return _on_backbone(weights, source, model, backbone, num_classes, id2label, head, overrides)


def _on_backbone(weights, source, model, backbone, num_classes, id2label, head, overrides):
    """Fresh heads on the backbone of a classification checkpoint whose config is ``backbone``."""
    if isinstance(model, str):
        check_variant(model, resolve_config(model), backbone, source)
    elif model is not None:
        backbone = resolve_config(model)
    config = segmentation_config(backbone, num_classes, id2label, head, overrides)
    if "dilations" in overrides and isinstance(weights, str):
        # asked for other dilations than the checkpoint's config.json: its weights fit them all
        weights = read_checkpoint(resolve_pretrained(weights))[1]
    return NatForSemanticSegmentation.from_backbone(weights, config)


def _from_upernet(source, model, num_classes, id2label, head, overrides):
    network = NatForSemanticSegmentation.from_pretrained(
        source, num_labels=num_classes, id2label=id2label, **overrides
    )
    _check_pretrained_fields(source, model, network.config, head)
    return network


def _from_segmenter_checkpoint(checkpoint, source, model, num_classes, id2label, head, overrides):
    """The whole network of a NatSegmenter checkpoint; fresh classifiers where the classes asked
    for differ from its own."""
    hp = checkpoint["hyper_parameters"]
    config = UperNetConfig(
        backbone=NatConfig.from_dict(hp["model"]).replace(**overrides),
        num_labels=hp["num_classes"],
        id2label={int(k): str(v) for k, v in hp["id2label"].items()},
        **{field: hp[arg] for arg, field in HEAD_ARGS.items()},
    )
    _check_pretrained_fields(source, model, config, head)
    state = {
        k.removeprefix("network."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("network.")
    }
    fresh = (num_classes or config.num_labels) != config.num_labels
    if fresh:
        labels = id2label or {i: str(i) for i in range(num_classes)}
        config = config.replace(num_labels=num_classes, id2label=labels)
        state = {k: v for k, v in state.items() if ".classifier." not in k}
        log.warning(
            "%s: decode_head.classifier and auxiliary_head.classifier are newly "
            "initialised for num_labels=%d (it has %d)",
            source,
            num_classes,
            hp["num_classes"],
        )
    elif id2label is not None:
        config = config.replace(id2label=id2label)
    network = NatForSemanticSegmentation(config)
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (fresh and ".classifier." in k)]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not fit its own config: missing "
            f"{missing[:10]}, unexpected {unexpected[:10]}"
        )
    return network


def _check_pretrained_fields(source, model, config: UperNetConfig, head: dict) -> None:
    """Head sizes and a backbone variant given beside a whole pretrained network must be its
    own."""
    if isinstance(model, str):
        check_variant(model, resolve_config(model), config.backbone, source)
    elif model is not None:
        raise ValueError(
            f"pretrained={source!r} brings its own backbone config; pass model=None or its "
            f"variant name, not a {type(model).__name__}"
        )
    differ = {
        k: (v, getattr(config, k))
        for k, v in head.items()
        if _comparable(v) != _comparable(getattr(config, k))
    }
    if differ:
        listing = ", ".join(f"{k}={a} (it has {b})" for k, (a, b) in differ.items())
        raise ValueError(
            f"pretrained={source!r} is a whole network with its own heads: {listing};"
            " leave these unset to take its values"
        )


def _comparable(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _labels(num_classes, id2label) -> tuple[int | None, dict[int, str] | None]:
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in id2label.items()}
        if num_classes is not None and num_classes != len(id2label):
            raise ValueError(f"id2label has {len(id2label)} entries but num_classes={num_classes}")
        num_classes = len(id2label)
    return num_classes, id2label


def _model_type(folder) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (expected a transformers folder)")
    return json.loads(config.read_text()).get("model_type")


def with_classes(
    network: NatForSemanticSegmentation, id2label: dict[int, str]
) -> NatForSemanticSegmentation:
    """The same network (the backbone shared, the heads copied) under fresh classifiers for
    ``id2label``."""
    config = network.config.replace(num_labels=len(id2label), id2label=dict(id2label))
    fresh = NatForSemanticSegmentation(config)
    fresh.backbone = network.backbone
    heads = {
        k: v
        for k, v in network.state_dict().items()
        if not k.startswith("backbone.") and ".classifier." not in k
    }
    fresh.load_state_dict(heads, strict=False)  # same config but the classes: the rest fits
    return fresh
