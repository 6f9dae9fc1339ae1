"""Mask2Former and OneFormer on a NAT/DiNAT backbone: transformers' heads, our backbone.

Everything but the backbone is transformers' own ``Mask2FormerForUniversalSegmentation`` or
``OneFormerForUniversalSegmentation``: the pixel decoder (multi-scale deformable attention), the
transformer decoder, the class and mask heads, the Hungarian matcher and the losses. transformers
builds its backbone with ``load_backbone(config)`` from ``config.backbone_config``; a NAT/DiNAT
config there would build transformers' DiNAT, which imports NATTEN functions deleted long ago.
So transformers builds a cheap stand-in (see ``universal_config.standin_backbone``) and the
stand-in is replaced by a slot that calls our :class:`NatBackbone`. The pixel decoder asks the
encoder for ``feature_maps``: NatBackbone's are already channels-first.

Parameters are ``backbone.*`` (the NatBackbone, as in NatForSemanticSegmentation) and ``heads.*``
(transformers' model, its names unchanged). In transformers' layout the backbone sits at
``model.pixel_level_module.encoder.*`` under its transformers names: checkpoints.py maps them.

Shapes for a ``(B, 3, H, W)`` input: feature maps ``(B, C_i, H/2^(i+2), W/2^(i+2))``;
``class_queries_logits`` ``(B, num_queries, num_labels + 1)`` (the last class is "no object");
``masks_queries_logits`` ``(B, num_queries, H/4, W/4)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..files import read_state_dict, write_atomically
from .checkpoints import from_transformers, to_canonical, to_transformers
from .config import NatConfig
from .hub import WEIGHT_FILES, resolve_pretrained
from .nat import NatBackbone, layer_ids_of, no_weight_decay_names
from .pretrained import _listing, load_checked, read_checkpoint
from .universal_config import (
    ARCHITECTURES,
    HeadConfig,
    config_dict,
    head_config,
    read_config,
    standin_backbone,
    with_labels,
)
from .upernet import _backbone_part, _dilations

log = logging.getLogger(__name__)
ENCODER = "model.pixel_level_module.encoder."  # where transformers keeps the backbone
# the weights whose shape follows num_labels, per architecture ("no object" is one more class)
_CLASSIFIERS = {
    "mask2former": ("heads.class_predictor.", "heads.criterion.empty_weight"),
    "oneformer": (
        "heads.model.transformer_module.decoder.class_embed.",
        "heads.criterion.empty_weight",
    ),
}
_TEXT_MAPPER = "heads.model.text_mapper."  # OneFormer's text encoder: built only if is_training


class BackboneSlot(nn.Module):
    """transformers' ``pixel_level_module.encoder``: calls the NatBackbone that
    NatForUniversalSegmentation owns. The backbone is held in a tuple, so that it is registered
    once (as ``backbone``) and its weights have one name."""

    def __init__(self, backbone: NatBackbone):
        super().__init__()
        self._backbone = (backbone,)
        self.channels = backbone.channels  # what transformers' pixel decoder reads

    def forward(self, pixel_values: torch.Tensor):
        return self._backbone[0](pixel_values)  # feature_maps: (B, C_i, h_i, w_i)


class NatForUniversalSegmentation(nn.Module):
    """Mask2Former or OneFormer with a NAT/DiNAT backbone: ``backbone`` and ``heads``.

    Args:
        config: transformers' Mask2FormerConfig or OneFormerConfig: the heads, the classes, the
            losses (see ``universal_config.head_config``). Its ``backbone_config`` is not used;
            the model's copy holds the stand-in that transformers built and discarded.
        backbone: the backbone; it must output one feature map per stride of the heads
            (``feature_strides``/``strides``: all four stages).
    """

    def __init__(self, config: HeadConfig, backbone: NatConfig):
        super().__init__()
        architecture = _architecture(config)
        if not isinstance(backbone, NatConfig):
            raise ValueError(  # noqa: TRY004 (user input: ValueError throughout, see STYLE.md)
                f"backbone must be a NatConfig, got backbone of type {type(backbone).__name__}"
            )
        _check_strides(config, backbone)
        self.backbone = NatBackbone(backbone.replace(num_labels=None, id2label=None))
        config = with_labels(config, None, None)  # a copy, label2id filled in
        config.backbone_config = standin_backbone(self.backbone.channels)
        heads = ARCHITECTURES[architecture][1](config)
        heads.model.pixel_level_module.encoder = BackboneSlot(self.backbone)
        self.heads = heads
        self.config = heads.config

    @property
    def architecture(self) -> str:
        """``mask2former`` or ``oneformer``."""
        return self.config.model_type

    def layer_ids(self) -> dict[str, int]:
        """Every parameter's layer id for layer-wise LR decay: the backbone's, the heads on top."""
        top = self.backbone.top_layer_id
        ids = {f"backbone.{name}": layer for name, layer in self.backbone.layer_ids().items()}
        return ids | layer_ids_of("heads", self.heads, top)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW does not decay: norms, biases, rpb, layer scales, and,
        as in Mask2Former's recipe (WEIGHT_DECAY_EMBED 0), the query and level embeddings, and
        OneFormer's contrastive temperature ``logit_scale``."""
        embeddings = {
            f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Embedding)
        }
        scales = {name for name, _ in self.named_parameters() if name.endswith("logit_scale")}
        return no_weight_decay_names(self) | embeddings | scales

    def set_attention_backend(self, backend: str) -> None:
        """Switch the backbone's attention layers to another nat_lightning.ops backend."""
        self.backbone.set_attention_backend(backend)

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        task_inputs: torch.Tensor | None = None,
        text_inputs: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
    ):
        """transformers' output (``Mask2FormerForUniversalSegmentationOutput`` or
        ``OneFormerForUniversalSegmentationOutput``): ``class_queries_logits``,
        ``masks_queries_logits``, ``auxiliary_logits`` and, with labels, ``loss``: a scalar, the
        sum of transformers' weighted losses after its Hungarian matching.

        Args:
            pixel_values: (B, 3, H, W).
            mask_labels: per image, (instances, H, W) binary masks (float).
            class_labels: per image, (instances,) class ids; given with mask_labels.
            task_inputs: OneFormer only, and required there: (B, task_seq_len) token ids of the
                task prompt ("the task is semantic", ...; OneFormerProcessor makes them).
            text_inputs: OneFormer with ``is_training`` only: token ids for the contrastive loss.
            output_auxiliary_logits: also return each decoder layer's predictions
                (``auxiliary_logits``; OneFormer's ``auxiliary_predictions``); None: the config's.
        """
        if (mask_labels is None) != (class_labels is None):
            raise ValueError(
                "mask_labels and class_labels go together: got "
                f"mask_labels={'None' if mask_labels is None else 'given'} and "
                f"class_labels={'None' if class_labels is None else 'given'}"
            )
        labels = {"mask_labels": mask_labels, "class_labels": class_labels,
                  "output_auxiliary_logits": output_auxiliary_logits}  # fmt: skip
        if self.architecture == "mask2former":
            if task_inputs is not None or text_inputs is not None:
                raise ValueError("task_inputs and text_inputs are OneFormer's; this is Mask2Former")
            return self.heads(pixel_values, **labels)
        if task_inputs is None or task_inputs.dim() != 2:
            raise ValueError(
                "OneFormer needs task_inputs: (batch, task_seq_len) token ids of the task prompt, "
                f"got task_inputs={None if task_inputs is None else tuple(task_inputs.shape)}"
            )
        out = self.heads(pixel_values, task_inputs, text_inputs=text_inputs, **labels)
        if out.loss is not None:
            out.loss = out.loss.reshape(())  # transformers' OneFormer sums to shape (1,)
        return out

    def image_losses(
        self, out, mask_labels: list[torch.Tensor], class_labels: list[torch.Tensor], seed: int = 0
    ) -> torch.Tensor:
        """(B,): each image's loss alone, from an output with auxiliary logits; its sampled
        points drawn from ``seed`` (transformers' matcher and losses sample random points), so
        that an image's loss does not depend on its batch or on the RNG's state."""
        aux = getattr(out, "auxiliary_logits", None) or getattr(out, "auxiliary_predictions", None)
        logits = out.class_queries_logits
        devices = [logits.device] if logits.is_cuda else []  # the CUDA RNG forked as well
        losses = []
        for i, (masks, classes) in enumerate(zip(mask_labels, class_labels)):
            one = {"masks_queries_logits": out.masks_queries_logits[i : i + 1],
                   "class_queries_logits": out.class_queries_logits[i : i + 1],
                   "mask_labels": [masks], "class_labels": [classes],
                   "auxiliary_predictions": [{k: v[i : i + 1] for k, v in a.items()}
                                             for a in aux or []]}  # fmt: skip
            if self.architecture == "oneformer":
                one |= {"contrastive_queries_logits": None, "text_queries": None,
                        "calculate_contrastive_loss": False}  # fmt: skip
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                losses.append(self.heads.get_loss(self.heads.get_loss_dict(**one)).reshape(()))
        return torch.stack(losses) if losses else out.class_queries_logits.new_zeros(0)

    # -- construction and checkpoints ---------------------------------------------------------

    @classmethod
    def from_variant(
        cls,
        name: str,
        architecture: str = "mask2former",
        *,
        backbone_overrides: Mapping | None = None,
        **fields,
    ) -> NatForUniversalSegmentation:
        """A fresh model: a named backbone variant (``nat_mini``, ``dinat_tiny``, ...) with all
        its stages as outputs, and heads of ``head_config(architecture, **fields)``.

        Args:
            name: the backbone variant.
            architecture: ``mask2former`` or ``oneformer``.
            backbone_overrides: NatConfig fields to change, e.g. ``{"drop_path_rate": 0.3}``.
            fields: head settings, e.g. ``num_labels=150, num_queries=100``.
        """
        stages = NatConfig.from_variant(name).stage_names[1:]  # unknown names are an error here
        backbone = NatConfig.from_variant(
            name, out_features=stages, **dict(backbone_overrides or {})
        )
        return cls(head_config(architecture, **fields), backbone)

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
    ) -> NatForUniversalSegmentation:
        """Load a transformers Mask2Former or OneFormer folder or Hub id (such as
        ``shi-labs/oneformer_ade20k_dinat_large``) whose backbone_config is NAT or DiNAT.
        Loading is strict, except that other classes give fresh classifiers (logged).

        Args:
            pretrained: a folder with config.json + model.safetensors (or pytorch_model.bin,
                read weights-only), or a Hub id.
            num_labels: classes; a number other than the checkpoint's gives fresh classifiers.
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
                f"pretrained={source!r} is a file; expected a transformers Mask2Former/OneFormer "
                "folder (config.json + model.safetensors) or a Hub id. For backbone weights alone "
                "use NatForUniversalSegmentation.from_backbone"
            )
        config, backbone = read_config(path)
        config = with_labels(config, num_labels, id2label)
        weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path} has none of {list(WEIGHT_FILES)}")
        state, origin = from_transformers_layout(read_state_dict(weights))
        model = cls(config, backbone.replace(**backbone_overrides))
        state = model._drop_text_mapper(state, source)
        own = {k: k for k in model.state_dict()}
        what = f"{cls.__name__}({model.architecture}, {backbone.model_type})"
        load_checked(model, state, origin, source, own, model._fresh(state, source), what)
        return model

    def _fresh(self, state: dict[str, torch.Tensor], source: str) -> tuple[str, ...]:
        """The classifiers to keep fresh: those whose class count differs from the checkpoint's."""
        classifiers = _CLASSIFIERS[self.architecture]
        theirs = state.get(classifiers[0] + "weight")
        if theirs is None or theirs.shape[0] == self.config.num_labels + 1:
            return ()
        log.warning(
            "%s: %s are newly initialised for num_labels=%d (the checkpoint has %d classes)",
            source,
            " and ".join(classifiers),
            self.config.num_labels,
            theirs.shape[0] - 1,
        )
        return classifiers

    def _drop_text_mapper(self, state: dict[str, torch.Tensor], source: str):
        """OneFormer's text encoder, when the config does not build one (is_training false)."""
        if any(k.startswith(_TEXT_MAPPER) for k in self.state_dict()):
            return state
        dropped = sorted(k for k in state if k.startswith(_TEXT_MAPPER))
        if dropped:
            log.info(
                "%s: is_training is false, so the model does not use %s", source, _listing(dropped)
            )
        return {k: v for k, v in state.items() if k not in dropped}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write transformers' layout: config.json + model.safetensors, each atomically.

        The folder loads with ``from_pretrained`` here and with transformers' (<= 4.40)
        ``Mask2FormerForUniversalSegmentation``/``OneFormerForUniversalSegmentation``.
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
        data = config_dict(self.config, self.backbone.config, type(self.heads).__name__)
        text = json.dumps(data, indent=2) + "\n"
        write_atomically(directory / "config.json", lambda tmp: Path(tmp).write_text(text))
        return directory

    @classmethod
    def from_backbone(
        cls,
        pretrained: str | os.PathLike | Mapping[str, torch.Tensor],
        config: HeadConfig,
        backbone: NatConfig | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **backbone_overrides,
    ) -> NatForUniversalSegmentation:
        """A new model whose backbone comes from a classification (or backbone) checkpoint; the
        heads are fresh. What the backbone does not use (the classifier's head, the final norm)
        and what it initialises afresh (stage norms) is logged, as NatBackbone.from_pretrained.

        Args:
            pretrained: anything ``NatBackbone.from_pretrained`` reads (a transformers folder, a
                Hub id, SHI-Labs' .pth), or a state dict in our, SHI-Labs' or transformers'
                naming (a classifier's, or a segmentation model's ``backbone.*``).
            config: the heads (transformers' Mask2FormerConfig/OneFormerConfig).
            backbone: the backbone's architecture; None takes the checkpoint's config.json with
                all stages as outputs. A config.json whose dilations differ is an error.
            revision: the Hub revision for a Hub id.
            cache_dir: huggingface_hub's cache folder for a Hub id.
            backbone_overrides: NatConfig fields to change, applied after the dilation check:
                e.g. ``dilations=[[1, 1], [1, 1], [1, 2, 1, 2], [1, 1]]`` for detection-style
                dilations on a classifier's weights, or ``drop_path_rate=0.3``.
        """
        if isinstance(pretrained, Mapping):
            source, raw, theirs = "the given state dict", _backbone_part(dict(pretrained)), None
        else:
            source = str(pretrained)
            path = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir)
            theirs, raw = read_checkpoint(path)
        if backbone is None:
            if theirs is None:
                raise ValueError(
                    f"pretrained={source!r} has no config.json: pass backbone=, a NatConfig of "
                    "the checkpoint's architecture"
                )
            backbone = theirs.replace(out_features=theirs.stage_names[1:])
        elif theirs is not None:
            _check_dilations(theirs, backbone, source)
        model = cls(config, backbone.replace(**backbone_overrides))
        state, origin = to_canonical(raw)
        model.backbone._load_canonical(state, origin, source)
        return model


# -- checkpoint helpers ---------------------------------------------------------------------------


def to_transformers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' names: ``heads.`` dropped, the backbone renamed under
    ``model.pixel_level_module.encoder.``."""
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {ENCODER + k: v for k, v in to_transformers(backbone).items()}
    out.update((k[len("heads.") :], v) for k, v in state.items() if k.startswith("heads."))
    return out


def from_transformers_layout(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """transformers' Mask2Former/OneFormer state dict -> ours, with each key's checkpoint key."""
    backbone = {k[len(ENCODER) :]: v for k, v in state.items() if k.startswith(ENCODER)}
    ours, origin = from_transformers(backbone)
    out = {f"backbone.{k}": v for k, v in ours.items()}
    origins = {f"backbone.{k}": ENCODER + v for k, v in origin.items()}
    for key, value in state.items():
        if not key.startswith(ENCODER):
            out[f"heads.{key}"], origins[f"heads.{key}"] = value, key
    return out, origins


def _architecture(config: HeadConfig) -> str:
    for name, (config_class, _) in ARCHITECTURES.items():
        if isinstance(config, config_class):
            return name
    raise ValueError(
        "config must be transformers' Mask2FormerConfig or OneFormerConfig (see "
        f"universal_config.head_config), got config of type {type(config).__name__}"
    )


def _check_strides(config: HeadConfig, backbone: NatConfig) -> None:
    """The heads expect one feature map per stride; NAT's stage i (1-based) has stride 2^(i+1)."""
    field = "feature_strides" if isinstance(config, ARCHITECTURES["mask2former"][0]) else "strides"
    strides = list(getattr(config, field))
    ours = [2 ** (i + 1) for i in backbone.out_indices]
    if strides != ours:
        raise ValueError(
            f"config.{field}={strides} must be the backbone's strides, {ours} for "
            f"backbone.out_features={backbone.out_features}: output every stage, e.g. "
            f"out_features={backbone.stage_names[1:]}"
        )


def _check_dilations(theirs: NatConfig, ours: NatConfig, source: str) -> None:
    """Weights do not show dilations: compare the checkpoint's config.json with ours."""
    if theirs.depths == ours.depths and _dilations(theirs) != _dilations(ours):
        raise ValueError(
            f"checkpoint {source} has dilations={_dilations(theirs)}, but backbone has "
            f"dilations={_dilations(ours)}: pass a backbone of the checkpoint's architecture, "
            "and other dilations as the backbone_overrides dilations=..."
        )
