"""UPerNet on a NAT/DiNAT backbone: transformers' heads, our backbone, our loss.

The heads are transformers' own ``UperNetHead`` (the decode head: pyramid pooling, FPN, fusion)
and ``UperNetFCNHead`` (the auxiliary head), built from our :class:`UperNetConfig`, which has
transformers' field names; so the parameter names are transformers' too, and transformers'
UperNet folders load here and ours load there. Only the backbone's names differ (ours are
SHI-Labs', mapped in checkpoints.py). Parameters are ``backbone.*`` (a :class:`NatBackbone`),
``decode_head.*`` and ``auxiliary_head.*``. The forward and the loss are ours: transformers' run
the auxiliary head at inference too, and its loss takes no class weights and is NaN on an image
without labelled pixels.

Shapes for a ``(B, 3, H, W)`` input with four backbone stages: feature maps ``(B, C_i, H/2^(i+2),
W/2^(i+2))``; the decode head works at ``H/4 x W/4`` with ``hidden_size`` channels; the logits are
upsampled to ``(B, num_labels, H, W)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

from ..files import read_state_dict, write_atomically
from .checkpoints import from_transformers, to_canonical, to_transformers
from .config import NatConfig
from .hub import WEIGHT_FILES, resolve_pretrained
from .nat import NatBackbone, _Output, layer_ids_of, no_weight_decay_names
from .pretrained import _listing, load_checked, read_checkpoint
from .upernet_config import AUXILIARY_INPUT, UperNetConfig

log = logging.getLogger(__name__)
_CLASSIFIERS = ("decode_head.classifier.", "auxiliary_head.classifier.")


@dataclass
class SemanticSegmenterOutput(_Output):
    loss: torch.Tensor | None = None  # scalar, when labels are given: decode + weight * auxiliary
    logits: torch.Tensor | None = None  # (B, num_labels, H, W), upsampled to the input
    auxiliary_logits: torch.Tensor | None = None  # (B, num_labels, H, W); with labels or training


def _resize(x: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _register_pyramid_pooling(head: UperNetHead) -> UperNetHead:
    """transformers' pyramid pooling keeps its blocks, and each block its (pool, conv) layers, in
    plain lists beside the registered modules, and runs the lists. A module swapped in by name
    (export.fix_adaptive_pools replaces each pool) would be registered but never run. Each block
    becomes the nn.Sequential of its layers: the same names, the same forward, run from the
    registered modules."""
    pooling = head.psp_modules
    for i, block in enumerate(pooling.blocks):
        pooling.blocks[i] = nn.Sequential(*block.layers)
        pooling.add_module(str(i), pooling.blocks[i])
    return head


# -- loss -----------------------------------------------------------------------------------------


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels; 0 (not NaN) when none is labelled.

    Args:
        logits: (B, num_labels, H, W).
        labels: (B, H, W) class ids; ``ignore_index`` marks unlabelled pixels.
        ignore_index: the label value to ignore.
        class_weights: (num_labels,) weights of the classes: each pixel's loss counts its class's
            weight, and the sum is divided by the labelled pixels' weights (PyTorch's weighted
            mean). None: every class 1.
    """
    total = F.cross_entropy(
        logits, labels, weight=class_weights, ignore_index=ignore_index, reduction="sum"
    )
    labelled = labels != ignore_index
    if class_weights is None:
        return total / labelled.sum().clamp(min=1)
    weights = class_weights.to(logits.dtype)[torch.where(labelled, labels, 0)] * labelled
    return total / weights.sum().clamp(min=torch.finfo(torch.float32).tiny)


# -- the model ------------------------------------------------------------------------------------


class NatForSemanticSegmentation(nn.Module):
    """UPerNet with a NAT/DiNAT backbone: ``backbone``, ``decode_head``, ``auxiliary_head``."""

    def __init__(self, config: UperNetConfig):
        super().__init__()
        self.config = config
        self.backbone = NatBackbone(config.backbone)  # initialised by NatBackbone itself
        # transformers' heads read hidden_size, pool_scales, num_labels and auxiliary_* from the
        # config: UperNetConfig has them under transformers' names
        channels = config.backbone_channels
        self.decode_head = _register_pyramid_pooling(UperNetHead(config, channels))
        self.auxiliary_head = (
            UperNetFCNHead(config, channels, in_index=AUXILIARY_INPUT)
            if config.use_auxiliary_head
            else None
        )
        self.init_head_weights()

    def layer_ids(self) -> dict[str, int]:
        """Every parameter's layer id for layer-wise LR decay: the backbone's, the heads on top."""
        top = self.backbone.top_layer_id
        ids = {f"backbone.{name}": layer for name, layer in self.backbone.layer_ids().items()}
        ids |= layer_ids_of("decode_head", self.decode_head, top)
        return ids | layer_ids_of("auxiliary_head", self.auxiliary_head, top)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW does not decay (norms, biases, rpb, layer scales)."""
        return no_weight_decay_names(self)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init of the heads: N(0, initializer_range) convolutions, zero biases,
        BatchNorm at (1, 0) with fresh running statistics."""
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()

    def init_head_weights(self) -> None:
        """Re-initialise both heads (the backbone keeps its weights)."""
        self.decode_head.apply(self._init_weights)
        if self.auxiliary_head is not None:
            self.auxiliary_head.apply(self._init_weights)

    def set_attention_backend(self, backend: str) -> None:
        """Switch the backbone's attention layers to another nat_lightning.ops backend."""
        self.backbone.set_attention_backend(backend)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> SemanticSegmenterOutput:
        """Logits at the input's size, and the loss when ``labels`` (B, H, W) are given, its
        cross-entropies weighted by ``class_weights`` (num_labels,) when given.

        The auxiliary head runs only with labels or in training: inference does not need it.
        """
        size = pixel_values.shape[2:]
        if labels is not None and (labels.dim() != 3 or labels.shape[1:] != size):
            raise ValueError(
                f"labels must be (batch, height, width) = (batch, {size[0]}, {size[1]}) for "
                f"pixel_values of shape {tuple(pixel_values.shape)}, "
                f"got labels.shape={tuple(labels.shape)}"
            )
        features = self.backbone(pixel_values).feature_maps  # (B, C_i, h_i, w_i)
        logits = _resize(self.decode_head(features), size)  # (B, num_labels, H, W)
        auxiliary = None
        if self.auxiliary_head is not None and (labels is not None or self.training):
            auxiliary = _resize(self.auxiliary_head(features), size)  # reads features[2]
        loss = None
        if labels is not None:
            ignore = self.config.loss_ignore_index
            loss = segmentation_loss(logits, labels, ignore, class_weights)
            if auxiliary is not None:
                weight = self.config.auxiliary_loss_weight
                loss = loss + weight * segmentation_loss(auxiliary, labels, ignore, class_weights)
        return SemanticSegmenterOutput(loss=loss, logits=logits, auxiliary_logits=auxiliary)

    # -- checkpoints: transformers' UperNet folders, classification backbones ---------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **backbone_overrides,
    ) -> NatForSemanticSegmentation:
        """Load a transformers ``UperNetForSemanticSegmentation`` folder or Hub id whose
        backbone_config is NAT or DiNAT. Loading is strict, except that other classes give fresh
        classifiers (logged).

        Args:
            pretrained: a folder with config.json + model.safetensors (or pytorch_model.bin), or
                a Hub id.
            num_labels: classes; a number other than the checkpoint's gives freshly initialised
                ``decode_head.classifier`` and ``auxiliary_head.classifier``.
            id2label: class names; implies ``num_labels=len(id2label)``.
            revision: the Hub revision (branch, tag or commit) for a Hub id.
            cache_dir: huggingface_hub's cache folder for a Hub id.
            backbone_overrides: NatConfig fields of the backbone to change, e.g.
                ``drop_path_rate=0.3, attention_backend="torch"``; unknown names are an error.
        """
        source = str(pretrained)
        path = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir)
        if not path.is_dir():
            raise ValueError(
                f"pretrained={source!r} is a file; expected a transformers UperNet folder "
                "(config.json + model.safetensors) or a Hub id. For backbone weights alone use "
                "NatForSemanticSegmentation.from_backbone"
            )
        config = UperNetConfig.from_json(path)
        config = _with_labels(config, num_labels, id2label)
        if backbone_overrides:
            config = config.replace(backbone=config.backbone.replace(**backbone_overrides))
        weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path} has none of {list(WEIGHT_FILES)}")
        state, origin = from_transformers_layout(read_state_dict(weights))
        model = cls(config)
        fresh = model._fresh_classifiers(state, source)
        own = {k: k for k in model.state_dict()}
        load_checked(
            model,
            state,
            origin,
            source,
            own,
            fresh,
            f"{cls.__name__}({config.backbone.model_type})",
        )
        return model

    def _fresh_classifiers(self, state: dict[str, torch.Tensor], source: str) -> tuple[str, ...]:
        """The classifiers to keep fresh: those whose class count differs from the checkpoint's."""
        theirs = state.get("decode_head.classifier.weight")
        if theirs is None or theirs.shape[0] == self.config.num_labels:
            return ()
        log.warning(
            "%s: decode_head.classifier and auxiliary_head.classifier are newly initialised for "
            "num_labels=%d (the checkpoint has %d classes)",
            source,
            self.config.num_labels,
            theirs.shape[0],
        )
        return _CLASSIFIERS

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write transformers' UperNet layout: config.json + model.safetensors, each atomically.

        The folder loads with ``from_pretrained`` here and with transformers' (<= 4.40)
        ``UperNetForSemanticSegmentation``.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tensors = to_transformers_layout(state)
        write_atomically(
            directory / "model.safetensors",
            lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        )
        self.config.save(directory)
        return directory

    @classmethod
    def from_backbone(
        cls,
        pretrained: str | os.PathLike | Mapping[str, torch.Tensor],
        config: UperNetConfig,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> NatForSemanticSegmentation:
        """A new model whose backbone comes from a classification (or backbone) checkpoint; the
        heads are fresh. What the backbone does not use (the classifier's head, the final norm)
        and what it initialises afresh (stage norms) is logged, as NatBackbone.from_pretrained.

        Args:
            pretrained: anything ``NatBackbone.from_pretrained`` reads (a transformers folder, a
                Hub id, SHI-Labs' .pth), or a state dict in our, SHI-Labs' or transformers'
                naming (a classifier's, a backbone's, or a segmentation model's ``backbone.*``).
            config: the model; its backbone must be the checkpoint's architecture.
            revision: the Hub revision for a Hub id.
            cache_dir: huggingface_hub's cache folder for a Hub id.
        """
        model = cls(config)
        if isinstance(pretrained, Mapping):
            source, raw = "the given state dict", _backbone_part(dict(pretrained))
        else:
            source = str(pretrained)
            path = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir)
            file_config, raw = read_checkpoint(path)
            if file_config is not None:
                _check_dilations(file_config, config, source)
        state, origin = to_canonical(raw)
        model.backbone._load_canonical(state, origin, source)
        return model


# -- checkpoint helpers ---------------------------------------------------------------------------


def to_transformers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' UperNet names (only the backbone's are renamed)."""
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in to_transformers(backbone).items()}
    out.update((k, v) for k, v in state.items() if not k.startswith("backbone."))
    return out


def from_transformers_layout(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """transformers' UperNet state dict -> ours, with the checkpoint key each one came from."""
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    ours, origin = from_transformers(backbone)
    out = {f"backbone.{k}": v for k, v in ours.items()}
    origins = {f"backbone.{k}": f"backbone.{v}" for k, v in origin.items()}
    for key, value in state.items():
        if not key.startswith("backbone."):
            out[key], origins[key] = value, key
    return out, origins


def _backbone_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder of our segmentation model (``backbone.*``) or of our classifier (``nat.*``),
    other keys dropped (logged); any other state dict (SHI-Labs', transformers') as it is."""
    if any(k.startswith("backbone.") for k in state):
        prefix = "backbone."
    elif any(k.startswith(("nat.patch_embed.", "nat.levels.")) for k in state):
        prefix = "nat."
    else:
        return state
    others = sorted(k for k in state if not k.startswith(prefix))
    if others:
        log.info("the given state dict: the backbone does not use %s", _listing(others))
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _check_dilations(theirs: NatConfig, config: UperNetConfig, source: str) -> None:
    """Weights do not show dilations: compare the checkpoint's config.json with ours."""
    ours = config.backbone
    if theirs.depths == ours.depths and _dilations(theirs) != _dilations(ours):
        raise ValueError(
            f"checkpoint {source} has dilations={_dilations(theirs)}, but config.backbone has "
            f"dilations={_dilations(ours)}: pass a config of the checkpoint's architecture"
        )


def _dilations(config: NatConfig) -> list[list[int]]:
    return [config.block_dilations(i) for i in range(len(config.depths))]


def _with_labels(
    config: UperNetConfig, num_labels: int | None, id2label: dict[int, str] | None
) -> UperNetConfig:
    """The checkpoint's config with the caller's classes, if any."""
    if id2label is not None:
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(
                f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} "
                "entries; pass one of them"
            )
        return config.replace(num_labels=len(id2label), id2label=id2label)
    if num_labels is not None and num_labels != config.num_labels:
        return config.replace(num_labels=num_labels)
    return config
