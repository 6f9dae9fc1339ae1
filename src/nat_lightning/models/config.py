"""NatConfig: the hyper-parameters of NAT and DiNAT, transformers' config.json, named variants."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..ops import BACKENDS

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
# keys that transformers writes into config.json but that describe nothing of the network
_TRANSFORMERS_KEYS = {
    "model_type", "architectures", "hidden_size", "num_layers", "stage_names", "label2id", "torch_dtype",
    "transformers_version", "_name_or_path", "problem_type", "num_labels",
}


@dataclass
class NatConfig:
    """transformers' NatConfig/DinatConfig fields and defaults (NAT-Mini), plus ``dilations``."""

    embed_dim: int = 64  # channels of stage 1; doubles every stage
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 5])  # blocks per stage
    num_heads: list[int] = field(default_factory=lambda: [2, 4, 8, 16])  # attention heads per stage
    kernel_size: int = 7  # neighborhood edge: every token attends to kernel_size**2 tokens
    dilations: list[list[int]] | None = None  # per stage, per block (DiNAT); None for NAT
    mlp_ratio: float = 3.0  # MLP hidden width / channels
    qkv_bias: bool = True  # bias on the query/key/value projection
    hidden_dropout_prob: float = 0.0  # dropout after the embeddings and MLP
    attention_probs_dropout_prob: float = 0.0  # dropout on the attention weights
    drop_path_rate: float = 0.1  # stochastic depth, linear from 0 to this over all blocks
    hidden_act: str = "gelu"  # MLP activation
    initializer_range: float = 0.02  # std of the normal init of linear and conv weights
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    layer_scale_init_value: float = 0.0  # layer scale init; 0 disables layer scale
    patch_size: int = 4  # only 4 is supported: two stride-2 3x3 convolutions
    num_channels: int = 3  # input image channels
    num_labels: int = 2  # classifier outputs (transformers' default); follows id2label when given
    id2label: dict[int, str] | None = None  # class names by id
    out_features: list[str] | None = None  # backbone outputs by name ("stem", "stage1", ...)
    out_indices: list[int] | None = None  # backbone outputs by index into stage_names
    attention_backend: str = "auto"  # nat_lightning.ops backend; not written to config.json

    def __post_init__(self):
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        if self.patch_size != 4:
            raise ValueError(f"patch_size must be 4 (NAT's convolutional tokenizer), got patch_size={self.patch_size}")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 3, got kernel_size={self.kernel_size}")
        if len(self.num_heads) != len(self.depths):
            raise ValueError(f"num_heads must have one entry per stage ({len(self.depths)}), got num_heads={self.num_heads}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(
                    f"stage {i} has {self.embed_dim * 2**i} channels, not divisible by num_heads[{i}]={heads}"
                )
        if self.dilations is not None:
            self.dilations = [list(d) for d in self.dilations]
            if [len(d) for d in self.dilations] != self.depths:
                raise ValueError(f"dilations must have one entry per block, shaped like depths={self.depths}, "
                                 f"got dilations={self.dilations}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got hidden_act={self.hidden_act!r}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self._align_out_features()

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i + 1}" for i in range(len(self.depths))]

    @property
    def model_type(self) -> str:
        return "nat" if self.dilations is None else "dinat"

    @property
    def hidden_size(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def block_dilations(self, stage: int) -> list[int]:
        return [1] * self.depths[stage] if self.dilations is None else self.dilations[stage]

    def _align_out_features(self) -> None:
        names = self.stage_names
        if self.out_features is None and self.out_indices is None:
            self.out_features, self.out_indices = [names[-1]], [len(names) - 1]
        elif self.out_indices is None:
            unknown = [f for f in self.out_features if f not in names]
            if unknown:
                raise ValueError(f"out_features must be among {names}, got out_features={self.out_features}")
            self.out_indices = [names.index(f) for f in self.out_features]
        else:
            if any(not -len(names) <= i < len(names) for i in self.out_indices):
                raise ValueError(f"out_indices must index {names}, got out_indices={self.out_indices}")
            expected = [names[i] for i in self.out_indices]
            if self.out_features is not None and list(self.out_features) != expected:
                raise ValueError(f"out_features={self.out_features} disagree with out_indices={self.out_indices}")
            self.out_features = expected
        self.out_features, self.out_indices = list(self.out_features), list(self.out_indices)

    # -- named variants ------------------------------------------------------------------------

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> "NatConfig":
        """A named variant (see :data:`VARIANTS`) with fields overridden."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known variants: {sorted(VARIANTS)}")
        return cls.from_dict({**VARIANTS[name], **overrides})

    def replace(self, **changes: Any) -> "NatConfig":
        """A copy with fields changed (validated again)."""
        if changes.get("num_labels") is not None and "id2label" not in changes and changes["num_labels"] != self.num_labels:
            changes["id2label"] = None
        return self.from_dict({**self.to_fields(), **changes})

    # -- dicts and transformers' config.json ---------------------------------------------------

    def to_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NatConfig":
        """Build from our fields or a transformers config dict; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - _TRANSFORMERS_KEYS)
        if unknown:
            raise ValueError(f"unknown NatConfig fields {unknown}; fields are {sorted(known)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        if "id2label" not in kwargs and "num_labels" in data:
            kwargs["num_labels"] = data["num_labels"]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """transformers' config.json content (model_type ``nat`` or ``dinat``)."""
        out = {k: v for k, v in self.to_fields().items() if k != "attention_backend"}
        if self.dilations is None:
            del out["dilations"]
        out.update(
            model_type=self.model_type,
            hidden_size=self.hidden_size,
            num_layers=len(self.depths),
            stage_names=self.stage_names,
            id2label={str(k): v for k, v in self.id2label.items()},
            label2id={v: k for k, v in self.id2label.items()},
        )
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> "NatConfig":
        """Read transformers' config.json; generic keys transformers adds are ignored."""
        data = json.loads(Path(path).read_text())
        model_type = data.get("model_type")
        if model_type not in ("nat", "dinat"):
            raise ValueError(f"{path}: model_type must be 'nat' or 'dinat', got model_type={model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)} | _TRANSFORMERS_KEYS
        return cls.from_dict({k: v for k, v in data.items() if k in known})


def _alternating(pattern: list[int], depth: int) -> list[int]:
    return [pattern[i % len(pattern)] for i in range(depth)]


def _dinat(depths: list[int]) -> list[list[int]]:
    """The DiNAT papers' dilations for 224 px: alternate 1 with 8, 4, 2, 1 by stage."""
    return [_alternating([1, d], n) for d, n in zip((8, 4, 2, 1), depths)]


_NAT = {
    "nat_mini": dict(embed_dim=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0, drop_path_rate=0.2),
    "nat_tiny": dict(embed_dim=64, depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0, drop_path_rate=0.2),
    "nat_small": dict(embed_dim=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], mlp_ratio=2.0,
                      drop_path_rate=0.3, layer_scale_init_value=1e-5),
    "nat_base": dict(embed_dim=128, depths=[3, 4, 18, 5], num_heads=[4, 8, 16, 32], mlp_ratio=2.0,
                     drop_path_rate=0.5, layer_scale_init_value=1e-5),
}
VARIANTS: MappingProxyType = MappingProxyType({
    **_NAT,
    **{name.replace("nat_", "dinat_"): {**cfg, "dilations": _dinat(cfg["depths"])} for name, cfg in _NAT.items()},
    "dinat_large": dict(embed_dim=192, depths=[3, 4, 18, 5], num_heads=[6, 12, 24, 48], mlp_ratio=2.0,
                        drop_path_rate=0.35, dilations=_dinat([3, 4, 18, 5])),
    # not from a paper: a ~0.4M-parameter NAT for 32 px inputs, trains on a CPU in a minute
    "nat_pico": dict(embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8], kernel_size=3, mlp_ratio=2.0,
                     drop_path_rate=0.0),
})
