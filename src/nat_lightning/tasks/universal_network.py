"""The universal segmenter's network: Mask2Former or OneFormer (transformers' heads) on a
NAT/DiNAT backbone, from a backbone variant or config, and optionally pretrained weights:

- a transformers Mask2Former/OneFormer folder or Hub id, or a NatUniversalSegmenter ``.ckpt``:
  the whole network (fresh classifiers where the classes differ);
- a classification checkpoint (a transformers NAT/DiNAT folder or Hub id, an original SHI-Labs
  ``.pth``, a NatClassifier ``.ckpt``): the backbone, under fresh heads.
"""

from __future__ import annotations

import logging
from typing import Any

from ..data.panoptic_shapes import PANOPTIC_SHAPES_CLASSES
from ..files import read_lightning_checkpoint
from ..models import NatConfig
from ..models.hub import resolve_pretrained
from ..models.universal import _CLASSIFIERS, NatForUniversalSegmentation
from ..models.universal_config import head_config, head_fields, with_labels
from .network import check_variant, resolve_config
from .seg_network import DEFAULT_BACKBONE, _labels, _model_type

log = logging.getLogger(__name__)

# the embedded panoptic shapes' heads, used when neither model nor pretrained is given: few
# queries, layers and channels, and all 256 points of a 64 px image's 16 x 16 mask logits
DEFAULT_HEADS = {
    "mask2former": {
        "num_queries": 16,
        "decoder_layers": 4,
        "hidden_dim": 64,
        "feature_size": 64,
        "mask_feature_size": 64,
        "encoder_layers": 1,
        "encoder_feedforward_dim": 128,
        "dim_feedforward": 128,
        "num_attention_heads": 4,
        "train_num_points": 256,
    },
    "oneformer": {
        "num_queries": 16,
        "decoder_layers": 4,
        "hidden_dim": 64,
        "conv_dim": 64,
        "mask_dim": 64,
        "encoder_layers": 1,
        "encoder_feedforward_dim": 128,
        "dim_feedforward": 128,
        "num_attention_heads": 4,
        "train_num_points": 256,
        "text_encoder_width": 64,
        "text_encoder_proj_layers": 1,
        "is_training": False,
    },
}
DEFAULT_ID2LABEL = dict(enumerate(PANOPTIC_SHAPES_CLASSES))
LABEL_FIELDS = ("id2label", "label2id", "num_labels")  # the classes: not head settings


def build_universal_network(
    model: str | NatConfig | dict[str, Any] | None,
    pretrained: str | None,
    architecture: str,
    num_classes: int | None,
    id2label: dict[int, str] | None,
    heads: dict[str, Any],
    backbone_overrides: dict[str, Any],
) -> NatForUniversalSegmentation:
    """The network from a backbone variant/config and optionally pretrained weights.

    ``heads`` holds head config fields that were given (``head_config`` checks their names;
    unset ones are the pretrained network's, else transformers' defaults, the papers' heads);
    ``backbone_overrides`` NatConfig fields such as ``attention_backend``. Without
    ``num_classes``/``id2label`` the classes are the pretrained network's, else the embedded
    panoptic shapes' (DEFAULT_ID2LABEL), until a datamodule's replace them.
    """
    labels = _labels(num_classes, id2label)
    source = None if pretrained is None else str(pretrained)
    if source is not None and source.endswith(".ckpt"):
        checkpoint = read_lightning_checkpoint(source)
        if any(k.startswith("network.heads.") for k in checkpoint["state_dict"]):
            return _from_own_checkpoint(
                checkpoint, source, model, labels, heads, backbone_overrides
            )
        backbone = NatConfig.from_dict(checkpoint["hyper_parameters"]["model"])
        weights = {
            k.removeprefix("network."): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("network.")
        }
        return _on_backbone(
            weights, source, model, backbone, architecture, labels, heads, backbone_overrides
        )
    if source is not None and not source.endswith((".pth", ".pt")):
        folder = resolve_pretrained(source)
        model_type = _model_type(folder)
        if model_type in ("mask2former", "oneformer"):
            _check_architecture(architecture, model_type, source)
            network = NatForUniversalSegmentation.from_pretrained(
                source, num_labels=labels[0], id2label=labels[1], **backbone_overrides
            )
            _check_fields(source, model, network, heads)
            return network
        backbone = NatConfig.from_pretrained_dir(folder)
        return _on_backbone(
            source, source, model, backbone, architecture, labels, heads, backbone_overrides
        )
    if source is not None and model is None:
        raise ValueError(
            f"pretrained={source!r} is a bare state dict (an original .pth) without a config: "
            "pass its variant as model=, e.g. model='dinat_large'"
        )
    backbone = resolve_config(model) or DEFAULT_BACKBONE
    if model is None:
        heads = {**DEFAULT_HEADS[architecture], **heads}
    config = universal_head_config(architecture, labels, heads)
    backbone = backbone.replace(out_features=backbone.stage_names[1:], **backbone_overrides)
    if source is None:
        return NatForUniversalSegmentation(config, backbone)
    return NatForUniversalSegmentation.from_backbone(source, config, backbone)


def universal_head_config(architecture: str, labels, heads: dict[str, Any]):
    """transformers' head config with the classes (DEFAULT_ID2LABEL when none are known)."""
    num_classes, id2label = labels
    if num_classes is None:
        id2label = DEFAULT_ID2LABEL
    id2label = id2label or {i: str(i) for i in range(num_classes)}
    return head_config(architecture, id2label=id2label, **heads)


def head_settings(network: NatForUniversalSegmentation) -> dict[str, Any]:
    """Every head field of the network's config, as plain values (for hyperparameters: a
    checkpoint rebuilds the same heads from them)."""
    config = network.config.to_dict()
    names = set(head_fields(network.architecture)) - set(LABEL_FIELDS)
    return {k: _plain(config[k]) for k in sorted(names) if k in config}


def with_classes(
    network: NatForUniversalSegmentation, id2label: dict[int, str]
) -> NatForUniversalSegmentation:
    """The same network (the weights copied) under fresh classifiers for ``id2label``."""
    config = with_labels(network.config, None, dict(id2label))
    fresh = NatForUniversalSegmentation(config, network.backbone.config)
    classifiers = _CLASSIFIERS[network.architecture]
    state = {k: v for k, v in network.state_dict().items() if not k.startswith(classifiers)}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(classifiers) for k in missing):
        raise RuntimeError(f"re-labelling lost weights: {missing[:5]} {unexpected[:5]}")
    return fresh


def _from_own_checkpoint(checkpoint, source, model, labels, heads, overrides):
    """The whole network of a NatUniversalSegmenter checkpoint; fresh classifiers where the
    classes asked for differ from its own."""
    hp = checkpoint["hyper_parameters"]
    own = {int(k): str(v) for k, v in hp["id2label"].items()}
    saved = {**hp["heads"], **{k: v for k, v in heads.items()}}
    _check_saved_fields(source, hp["heads"], heads)
    if isinstance(model, str):
        check_variant(model, resolve_config(model), NatConfig.from_dict(hp["model"]), source)
    config = head_config(hp["architecture"], id2label=own, **saved)
    backbone = NatConfig.from_dict(hp["model"]).replace(**overrides)
    network = NatForUniversalSegmentation(config, backbone)
    state = {
        k.removeprefix("network."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("network.")
    }
    network.load_state_dict(state)
    num_classes, id2label = labels
    if id2label is None and num_classes is not None and num_classes != len(own):
        id2label = {i: str(i) for i in range(num_classes)}
    if id2label is not None and id2label != own:
        if len(id2label) != len(own):
            log.warning(
                "%s: the classifiers are newly initialised for %d classes (it has %d)",
                source,
                len(id2label),
                len(own),
            )
            return with_classes(network, id2label)
        network.config.id2label = dict(id2label)
        network.config.label2id = {v: k for k, v in id2label.items()}
    return network


def _on_backbone(weights, source, model, backbone, architecture, labels, heads, overrides):
    """Fresh heads on the backbone of a classification checkpoint whose config is ``backbone``."""
    if isinstance(model, str):
        check_variant(model, resolve_config(model), backbone, source)
    elif model is not None:
        backbone = resolve_config(model)
    config = universal_head_config(architecture, labels, heads)
    backbone = backbone.replace(out_features=backbone.stage_names[1:])
    # a folder's own config.json, unless a model was given (its dilations are checked there)
    given = None if isinstance(weights, str) and model is None else backbone
    return NatForUniversalSegmentation.from_backbone(weights, config, given, **overrides)


def _check_architecture(given: str, found: str, source: str) -> None:
    if given != found:
        raise ValueError(
            f"architecture={given!r} but pretrained={source!r} is a {found} network; pass "
            f"architecture={found!r} (or another checkpoint)"
        )


def _check_fields(source, model, network: NatForUniversalSegmentation, heads: dict) -> None:
    """A backbone variant and head fields given beside a whole pretrained network must be its
    own."""
    if isinstance(model, str):
        check_variant(model, resolve_config(model), network.backbone.config, source)
    elif model is not None:
        raise ValueError(
            f"pretrained={source!r} brings its own backbone config; pass model=None or its "
            f"variant name, not a {type(model).__name__}"
        )
    _check_saved_fields(source, head_settings(network), heads)


def _check_saved_fields(source, saved: dict, heads: dict) -> None:
    differ = {k: (v, saved.get(k)) for k, v in heads.items() if _plain(v) != saved.get(k)}
    if differ:
        listing = ", ".join(f"{k}={a} (it has {b})" for k, (a, b) in differ.items())
        raise ValueError(
            f"pretrained={source!r} is a whole network with its own heads: {listing}; leave "
            "these unset to take its values"
        )


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
