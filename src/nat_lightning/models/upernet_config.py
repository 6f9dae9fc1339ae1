"""UperNetConfig: UPerNet's head hyper-parameters around a NAT/DiNAT backbone, and transformers'
``UperNetForSemanticSegmentation`` config.json.

Field names and defaults are those of transformers' UperNetConfig, except that the backbone is
always a :class:`NatConfig` (written as ``backbone_config``) and ``auxiliary_in_channels`` is
derived from it rather than set. transformers' ``UperNetHead`` and ``UperNetFCNHead`` read their
settings from this config by those names (see upernet.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import write_atomically
from .config import _DERIVED_KEYS as _NAT_DERIVED_KEYS
from .config import NatConfig, _positive_int

ARCHITECTURE = "UperNetForSemanticSegmentation"
AUXILIARY_INPUT = 2  # the auxiliary head reads feature_maps[2] (stage 3 of four), as transformers
# transformers' keys that describe where a backbone comes from; only an inline NAT/DiNAT config
# (backbone_config) is supported, so each must hold the value below
_BACKBONE_SOURCE = {
    "backbone": None,
    "use_timm_backbone": False,
    "use_pretrained_backbone": False,
    "backbone_kwargs": None,
}
_DERIVED = {"model_type", "architectures", "label2id", "auxiliary_in_channels", "backbone_config"}
_IGNORED = {"torch_dtype", "transformers_version", "_name_or_path", "problem_type"}
_TRANSFORMERS_AUX_IN_CHANNELS = 384  # transformers' default, written when there is no aux head


@dataclass(kw_only=True)
class UperNetConfig:
    """transformers' UperNetConfig fields and defaults, on a NAT/DiNAT backbone."""

    backbone: NatConfig  # the backbone; its out_features are the maps the heads read
    num_labels: int | None = None  # classes; len(id2label) if given, else 2
    id2label: dict[int, str] | None = None  # class names by id; LABEL_i if not given
    hidden_size: int = 512  # channels of the decode head's convolutions
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)  # output sizes of the pyramid pooling module
    use_auxiliary_head: bool = True  # an FCN head on feature_maps[2] (stage 3), training only
    auxiliary_loss_weight: float = 0.4  # weight of the auxiliary head's loss
    auxiliary_channels: int = 256  # channels of the auxiliary head's convolutions
    auxiliary_num_convs: int = 1  # 3x3 conv-BN-ReLU blocks in the auxiliary head
    auxiliary_concat_input: bool = False  # auxiliary head: concat its input before the classifier
    loss_ignore_index: int = 255  # label value that the loss ignores
    initializer_range: float = 0.02  # std of the normal init of the heads' convolutions

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, NatConfig):
            raise ValueError(  # noqa: TRY004 (user input: ValueError throughout, see STYLE.md)
                "backbone must be a NatConfig (e.g. NatConfig.from_variant('nat_mini', "
                f"out_features=[...])), got backbone of type {type(self.backbone).__name__}"
            )
        # the backbone has no classes: its label fields are reset so that configs compare equal
        # after a config.json round trip (backbone_config carries no id2label)
        self.backbone = self.backbone.replace(num_labels=None, id2label=None)
        self._resolve_labels()
        self._check_head()
        self._check_auxiliary()

    def _resolve_labels(self) -> None:
        NatConfig._resolve_labels(self)  # the classifier's rules; it reads and sets only these two
        if self.num_labels < 2:
            raise ValueError(
                "semantic segmentation needs at least 2 classes (cross-entropy over classes), "
                f"got num_labels={self.num_labels}"
            )

    def _check_head(self) -> None:
        _positive_int("hidden_size", self.hidden_size)
        if isinstance(self.pool_scales, (str, bytes)) or not self.pool_scales:
            raise ValueError(
                f"pool_scales must list sizes >= 1, got pool_scales={self.pool_scales!r}"
            )
        self.pool_scales = tuple(self.pool_scales)
        for i, scale in enumerate(self.pool_scales):
            _positive_int(f"pool_scales[{i}]", scale)
        if not isinstance(self.loss_ignore_index, int) or isinstance(self.loss_ignore_index, bool):
            raise ValueError(  # noqa: TRY004
                f"loss_ignore_index must be an integer, got loss_ignore_index={self.loss_ignore_index!r}"
            )
        if not self.initializer_range >= 0:
            raise ValueError(
                f"initializer_range must be >= 0, got initializer_range={self.initializer_range}"
            )

    def _check_auxiliary(self) -> None:
        _positive_int("auxiliary_channels", self.auxiliary_channels)
        _positive_int("auxiliary_num_convs", self.auxiliary_num_convs)
        if not self.auxiliary_loss_weight >= 0:
            raise ValueError(
                f"auxiliary_loss_weight must be >= 0, got auxiliary_loss_weight={self.auxiliary_loss_weight}"
            )
        features = self.backbone.out_features
        if self.use_auxiliary_head and len(features) <= AUXILIARY_INPUT:
            raise ValueError(
                f"the auxiliary head reads the backbone's feature map {AUXILIARY_INPUT} (stage 3 "
                f"of four), but backbone.out_features={features} has {len(features)}: output "
                "more stages, e.g. out_features=['stage1', 'stage2', 'stage3', 'stage4'], or set "
                "use_auxiliary_head=False"
            )

    # -- derived values ------------------------------------------------------------------------

    @property
    def model_type(self) -> str:
        return "upernet"

    @property
    def backbone_channels(self) -> list[int]:
        """Channels of each backbone feature map the heads read, in stage order."""
        b = self.backbone
        channels = [b.embed_dim] + [b.embed_dim * 2**i for i in range(len(b.depths))]
        return [channels[i] for i in b.out_indices]

    @property
    def auxiliary_in_channels(self) -> int | None:
        """Channels of the auxiliary head's input; None without one."""
        return self.backbone_channels[AUXILIARY_INPUT] if self.use_auxiliary_head else None

    # -- construction and copies ---------------------------------------------------------------

    @classmethod
    def from_variant(
        cls,
        name: str,
        *,
        backbone_overrides: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> UperNetConfig:
        """A named backbone variant (see ``nat_lightning.models.VARIANTS``) with all its stages
        as outputs, and UperNetConfig ``fields``.

        Args:
            name: the backbone variant, e.g. ``nat_mini`` or ``dinat_tiny``.
            backbone_overrides: NatConfig fields to change, e.g. ``{"drop_path_rate": 0.3}``.
            fields: UperNetConfig fields, e.g. ``num_labels=150``.
        """
        probe = NatConfig.from_variant(name)  # unknown names are an error here
        backbone = NatConfig.from_variant(
            name, out_features=probe.stage_names[1:], **dict(backbone_overrides or {})
        )
        return cls(backbone=backbone, **fields)

    def replace(self, **changes: Any) -> UperNetConfig:
        """A validated copy with fields changed; a new num_labels alone resets id2label."""
        if (
            changes.get("num_labels", self.num_labels) != self.num_labels
            and "id2label" not in changes
        ):
            changes["id2label"] = None
        return dataclasses.replace(self, **changes)

    # -- transformers' config.json -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """transformers' UperNet config.json content, the backbone under ``backbone_config``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["backbone"], out["num_labels"]
        backbone = self.backbone.to_dict(architectures=[_family(self.backbone) + "Backbone"])
        for key in ("architectures", "id2label", "label2id", "attention_backend"):
            backbone.pop(key, None)
        out.update(
            _BACKBONE_SOURCE,
            model_type=self.model_type,
            architectures=[ARCHITECTURE],
            backbone_config=backbone,
            pool_scales=list(self.pool_scales),
            auxiliary_in_channels=self.auxiliary_in_channels or _TRANSFORMERS_AUX_IN_CHANNELS,
            id2label={str(k): v for k, v in self.id2label.items()},
            label2id={v: k for k, v in self.id2label.items()},
        )
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UperNetConfig:
        """Build from a transformers UperNet config dict; unknown keys are an error.

        ``backbone_config`` must be a NAT or DiNAT config; derived keys are checked.
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"backbone"}
        unknown = sorted(set(data) - known - _DERIVED - set(_BACKBONE_SOURCE) - _IGNORED)
        if unknown:
            raise ValueError(f"unknown UperNetConfig fields {unknown}; fields are {sorted(known)}")
        if data.get("model_type", "upernet") != "upernet":
            raise ValueError(f"model_type must be 'upernet', got model_type={data['model_type']!r}")
        for key, value in _BACKBONE_SOURCE.items():
            if data.get(key, value) not in (value, {}):
                raise ValueError(
                    f"only an inline NAT/DiNAT backbone_config is supported, got {key}={data[key]!r}"
                )
        config = cls(
            backbone=_backbone_from_dict(data.get("backbone_config")),
            **{k: v for k, v in data.items() if k in known},
        )
        theirs = data.get("auxiliary_in_channels")
        if (
            config.use_auxiliary_head
            and theirs is not None
            and theirs != config.auxiliary_in_channels
        ):
            raise ValueError(
                f"auxiliary_in_channels={theirs} disagrees with the backbone, whose feature map "
                f"{AUXILIARY_INPUT} has {config.auxiliary_in_channels} channels"
            )
        return config

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> UperNetConfig:
        """Read a transformers UperNet config.json, or the one in the folder ``path``.

        Keys that transformers writes for every model (``return_dict``, ...) are skipped, at both
        levels; model_type must be ``upernet``.
        """
        path = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist (expected a transformers UperNet config.json)"
            )
        data = json.loads(path.read_text())
        if data.get("model_type") != "upernet":
            hint = (
                "; for a classification checkpoint use NatForSemanticSegmentation.from_backbone"
                if data.get("model_type") in ("nat", "dinat")
                else ""
            )
            raise ValueError(
                f"{path}: model_type must be 'upernet' (transformers' "
                f"UperNetForSemanticSegmentation), got model_type={data.get('model_type')!r}{hint}"
            )
        known = {f.name for f in dataclasses.fields(cls)} | _DERIVED | set(_BACKBONE_SOURCE)
        data = {k: v for k, v in data.items() if k in known}
        if isinstance(data.get("backbone_config"), Mapping):
            nat_keys = {f.name for f in dataclasses.fields(NatConfig)} | _NAT_DERIVED_KEYS
            backbone = data["backbone_config"]
            data["backbone_config"] = {k: v for k, v in backbone.items() if k in nat_keys}
        return cls.from_dict(data)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/config.json`` atomically; returns the file."""
        path = Path(directory) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_atomically(path, lambda tmp: Path(tmp).write_text(text))
        return path


def _backbone_from_dict(data: Any) -> NatConfig:
    if data is None:
        raise ValueError(
            "backbone_config is missing (transformers would build its default ResNet); this "
            "model needs a NAT or DiNAT backbone_config"
        )
    if not isinstance(data, Mapping):
        raise ValueError(f"backbone_config must be a dict, got {type(data).__name__}")  # noqa: TRY004
    model_type = data.get("model_type")
    if model_type not in ("nat", "dinat"):
        raise ValueError(
            "backbone_config.model_type must be 'nat' or 'dinat' (this model runs NAT/DiNAT "
            f"backbones only), got backbone_config.model_type={model_type!r}"
        )
    return NatConfig.from_dict(data)


def _family(config: NatConfig) -> str:
    return "Nat" if config.model_type == "nat" else "Dinat"
