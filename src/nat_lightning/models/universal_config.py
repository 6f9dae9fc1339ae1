"""The configs of universal segmentation: transformers' Mask2FormerConfig or OneFormerConfig for the
heads, our :class:`NatConfig` for the backbone, and the config.json that holds both.

transformers' config classes carry the head settings as they are (field names, defaults, the
published checkpoints' values). Their ``backbone_config`` cannot hold the backbone: a NAT/DiNAT
config there would import transformers' DiNAT package, whose model imports NATTEN functions that
NATTEN deleted. So the backbone travels as a NatConfig beside the head config, and is written to
config.json as transformers' ``backbone_config`` (model_type ``nat``/``dinat``), the layout of
the published Mask2Former and OneFormer + DiNAT folders.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    OneFormerConfig,
    OneFormerForUniversalSegmentation,
    ResNetConfig,
)

from .config import _DERIVED_KEYS as _NAT_DERIVED_KEYS
from .config import NatConfig
from .upernet_config import _BACKBONE_SOURCE, _backbone_from_dict

HeadConfig = Mask2FormerConfig | OneFormerConfig
# model_type -> (the config class of the heads, transformers' model class)
ARCHITECTURES = {
    "mask2former": (Mask2FormerConfig, Mask2FormerForUniversalSegmentation),
    "oneformer": (OneFormerConfig, OneFormerForUniversalSegmentation),
}
# what every transformers config has, not head settings: written by transformers, never asked for
_NOT_HEAD = {
    "backbone_config",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_name_or_path",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "problem_type",
}
_NOT_WRITTEN = ("dtype", "_name_or_path")  # transformers 5 only; 4.40 writes torch_dtype


def head_fields(architecture: str) -> list[str]:
    """The head settings ``head_config`` accepts for ``architecture``."""
    config_class = ARCHITECTURES[_checked(architecture)][0]
    names = {f.name for f in dataclasses.fields(config_class)} - _NOT_HEAD
    return sorted(names | {"num_labels", "num_hidden_layers"})


def head_config(architecture: str = "mask2former", **fields: Any) -> HeadConfig:
    """transformers' config of the heads, its fields checked by name (transformers' own classes
    accept any keyword silently).

    Args:
        architecture: ``mask2former`` or ``oneformer``.
        fields: head settings, e.g. ``num_labels=150`` (or ``id2label``), ``num_queries=100``,
            ``decoder_layers=10``, ``hidden_dim=256``, ``train_num_points=12544``; unset ones keep
            transformers' defaults (the papers' heads). The backbone is not among them: pass it as
            a NatConfig to the model.
    """
    known = head_fields(architecture)
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(
            f"unknown {architecture} head fields {unknown} (the backbone is a NatConfig, "
            f"passed separately); fields are {known}"
        )
    if "id2label" in fields:
        fields["id2label"] = {int(k): v for k, v in fields["id2label"].items()}
    return ARCHITECTURES[architecture][0](**fields)


def with_labels(
    config: HeadConfig, num_labels: int | None, id2label: Mapping[int, str] | None
) -> HeadConfig:
    """A copy of ``config`` with the caller's classes, if any."""
    if id2label is not None and num_labels is not None and num_labels != len(id2label):
        raise ValueError(
            f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} "
            "entries; pass one of them"
        )
    config = copy.deepcopy(config)
    if id2label is not None:
        config.id2label = {int(k): v for k, v in id2label.items()}
    elif num_labels is not None and num_labels != config.num_labels:
        config.num_labels = num_labels  # transformers names them LABEL_i
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def standin_backbone(channels: list[int]) -> ResNetConfig:
    """What transformers builds as ``pixel_level_module.encoder`` before NatBackbone replaces it:
    a one-block-per-stage ResNet with the backbone's channels (the pixel decoder reads only
    ``channels``), bottleneck blocks so that it costs little to build and throw away."""
    return ResNetConfig(
        embedding_size=8,
        hidden_sizes=list(channels),
        depths=[1] * len(channels),
        layer_type="bottleneck" if min(channels) >= 4 else "basic",
        out_features=[f"stage{i + 1}" for i in range(len(channels))],
    )


def read_config(path: str | os.PathLike) -> tuple[HeadConfig, NatConfig]:
    """(head config, backbone config) from a transformers Mask2Former/OneFormer config.json, or
    the one in the folder ``path``; its ``backbone_config`` must be NAT or DiNAT."""
    path = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist (expected a transformers Mask2Former/OneFormer config.json)"
        )
    data = json.loads(path.read_text())
    model_type = data.get("model_type")
    if model_type not in ARCHITECTURES:
        hint = {
            "nat": "; for a classification checkpoint use NatForUniversalSegmentation.from_backbone",
            "dinat": "; for a classification checkpoint use NatForUniversalSegmentation.from_backbone",
            "upernet": "; for UPerNet use NatForSemanticSegmentation.from_pretrained",
        }.get(model_type, "")
        raise ValueError(
            f"{path}: model_type must be one of {list(ARCHITECTURES)} (transformers' "
            f"...ForUniversalSegmentation), got model_type={model_type!r}{hint}"
        )
    for key, value in _BACKBONE_SOURCE.items():
        if data.get(key, value) not in (value, {}):
            raise ValueError(
                f"{path}: only an inline NAT/DiNAT backbone_config is supported, got {key}={data[key]!r}"
            )
    backbone = data.get("backbone_config")
    if isinstance(backbone, Mapping):
        nat_keys = {f.name for f in dataclasses.fields(NatConfig)} | _NAT_DERIVED_KEYS
        backbone = {k: v for k, v in backbone.items() if k in nat_keys - {"attention_backend"}}
    skipped = _NOT_HEAD | set(_BACKBONE_SOURCE) | {"model_type", "label2id"}
    fields = {k: v for k, v in data.items() if k not in skipped}
    if "id2label" in fields:
        fields["id2label"] = {int(k): v for k, v in fields["id2label"].items()}
    return ARCHITECTURES[model_type][0](**fields), _backbone_from_dict(backbone)


def config_dict(config: HeadConfig, backbone: NatConfig, architecture: str) -> dict[str, Any]:
    """transformers' config.json content: the head fields, the backbone as ``backbone_config``."""
    out = config.to_dict()
    for key in _NOT_WRITTEN:
        out.pop(key, None)
    family = "Nat" if backbone.model_type == "nat" else "Dinat"
    nat = backbone.to_dict(architectures=[family + "Backbone"])
    for key in ("architectures", "id2label", "label2id", "attention_backend"):
        nat.pop(key, None)
    out.update(
        _BACKBONE_SOURCE,
        architectures=[architecture],
        backbone_config=nat,
        id2label={str(k): v for k, v in config.id2label.items()},
        label2id={v: k for k, v in config.id2label.items()},
    )
    return dict(sorted(out.items()))


def _checked(architecture: str) -> str:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {list(ARCHITECTURES)}, got architecture={architecture!r}"
        )
    return architecture
