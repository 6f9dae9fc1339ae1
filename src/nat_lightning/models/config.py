"""NatConfig: the hyper-parameters of NAT and DiNAT, transformers' config.json, named variants.

One dataclass covers both architectures: ``dilations=None`` is NAT (model_type ``nat``), a
per-stage, per-block list of dilations is DiNAT (model_type ``dinat``). Field names and defaults
are those of transformers' NatConfig/DinatConfig, so a config.json written by either loads here
and one written here loads in transformers <= 4.40.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..files import write_atomically
from ..ops import BACKENDS

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
# transformers' DinatConfig default, used when a "dinat" config.json omits dilations
DINAT_DEFAULT_DILATIONS = [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
# keys transformers writes into config.json that we derive (checked) or that describe no weights
_DERIVED_KEYS = {
    "model_type",
    "architectures",
    "hidden_size",
    "num_layers",
    "stage_names",
    "label2id",
}
_IGNORED_KEYS = {"torch_dtype", "transformers_version", "_name_or_path", "problem_type"}


@dataclass(kw_only=True)
class NatConfig:
    """transformers' NatConfig/DinatConfig fields and defaults (NAT-Mini), plus ``dilations``."""

    patch_size: int = 4  # only 4: the tokenizer is two stride-2 3x3 convolutions
    num_channels: int = 3  # input image channels
    embed_dim: int = 64  # channels of stage 1; doubled by every downsampler
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 5])  # blocks per stage
    num_heads: list[int] = field(default_factory=lambda: [2, 4, 8, 16])  # attention heads per stage
    kernel_size: int = 7  # neighborhood edge: every token attends to kernel_size**2 tokens
    dilations: list[list[int]] | None = None  # per stage, per block (DiNAT); None for NAT
    mlp_ratio: float = 3.0  # MLP hidden width / channels
    qkv_bias: bool = True  # bias on the query/key/value projection
    hidden_dropout_prob: float = 0.0  # dropout after the embeddings and the MLP
    attention_probs_dropout_prob: float = 0.0  # dropout on attention weights and its projection
    drop_path_rate: float = 0.1  # stochastic depth, linear from 0 to this over all blocks
    hidden_act: str = "gelu"  # MLP activation, one of ACTIVATIONS
    initializer_range: float = 0.02  # std of the normal init of linear and conv weights
    layer_norm_eps: float = 1e-5  # epsilon of the blocks' and the final LayerNorm
    layer_scale_init_value: float = 0.0  # initial layer scale; <= 0 disables layer scale
    out_features: list[str] | None = None  # backbone outputs by name ("stem", "stage1", ...)
    out_indices: list[int] | None = None  # backbone outputs by index into stage_names
    num_labels: int | None = None  # classifier outputs; len(id2label) if given, else 2
    id2label: dict[int, str] | None = None  # class names by id; LABEL_i if not given
    attention_backend: str = "auto"  # nat_lightning.ops backend; not written to config.json

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_stages()
        self._check_training()
        self._resolve_labels()
        self._align_out_features()

    # -- validation ----------------------------------------------------------------------------

    def _check_sizes(self) -> None:
        if self.patch_size != 4:
            raise ValueError(
                "patch_size must be 4 (NAT's convolutional tokenizer), "
                f"got patch_size={self.patch_size}"
            )
        _positive_int("num_channels", self.num_channels)
        if not isinstance(self.embed_dim, int) or self.embed_dim < 2:
            raise ValueError(f"embed_dim must be an integer >= 2, got embed_dim={self.embed_dim!r}")
        odd = isinstance(self.kernel_size, int) and self.kernel_size % 2 == 1
        if not odd or self.kernel_size < 3:
            raise ValueError(
                f"kernel_size must be an odd integer >= 3, got kernel_size={self.kernel_size!r}"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got mlp_ratio={self.mlp_ratio}")

    def _check_stages(self) -> None:
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        if not self.depths:
            raise ValueError("depths must list at least one stage, got depths=[]")
        for name, values in (("depths", self.depths), ("num_heads", self.num_heads)):
            for i, v in enumerate(values):
                _positive_int(f"{name}[{i}]", v)
        if len(self.num_heads) != len(self.depths):
            raise ValueError(
                f"num_heads must have one entry per stage ({len(self.depths)} stages in depths="
                f"{self.depths}), got num_heads={self.num_heads}"
            )
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(
                    f"stage {i} has embed_dim * 2**{i} = {self.embed_dim * 2**i} channels, which "
                    f"must be divisible by num_heads[{i}]={heads}"
                )
        if self.dilations is None:
            return
        self.dilations = [list(stage) for stage in self.dilations]
        if [len(stage) for stage in self.dilations] != self.depths:
            raise ValueError(
                f"dilations must have one entry per block, shaped like depths={self.depths}, "
                f"got dilations={self.dilations}"
            )
        for i, stage in enumerate(self.dilations):
            for j, d in enumerate(stage):
                _positive_int(f"dilations[{i}][{j}]", d)

    def _check_training(self) -> None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {name}={value}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act must be one of {ACTIVATIONS}, got hidden_act={self.hidden_act!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(
                f"layer_norm_eps must be > 0, got layer_norm_eps={self.layer_norm_eps}"
            )
        if not self.initializer_range >= 0:
            raise ValueError(
                f"initializer_range must be >= 0, got initializer_range={self.initializer_range}"
            )
        if self.attention_backend not in BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {BACKENDS}, "
                f"got attention_backend={self.attention_backend!r}"
            )

    def _resolve_labels(self) -> None:
        if self.id2label is None:
            num = 2 if self.num_labels is None else self.num_labels
            if not isinstance(num, int) or num < 0:
                raise ValueError(f"num_labels must be an integer >= 0, got num_labels={num!r}")
            self.num_labels, self.id2label = num, {i: f"LABEL_{i}" for i in range(num)}
            return
        try:
            id2label = {int(k): str(v) for k, v in self.id2label.items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"id2label keys must be integers (or their strings), got id2label={self.id2label!r}"
            )
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError(
                f"id2label keys must be 0..{len(id2label) - 1}, got keys {sorted(id2label)}"
            )
        if self.num_labels is not None and self.num_labels != len(id2label):
            raise ValueError(
                f"num_labels={self.num_labels} disagrees with id2label, which has {len(id2label)} "
                "entries; pass one of them"
            )
        self.id2label, self.num_labels = id2label, len(id2label)

    def _align_out_features(self) -> None:
        """Fill in whichever of out_features/out_indices is missing, as transformers does."""
        names = self.stage_names
        features = None if self.out_features is None else list(self.out_features)
        indices = None if self.out_indices is None else list(self.out_indices)
        _check_stage_selection(names, features, indices)
        if features is None and indices is None:
            features, indices = [names[-1]], [len(names) - 1]
        elif indices is None:
            indices = [names.index(f) for f in features]
        elif features is None:
            features = [names[i] for i in indices]
        elif features != [names[i] for i in indices]:
            raise ValueError(
                f"out_features={features} and out_indices={indices} must name the same stages "
                f"of stage_names={names}"
            )
        self.out_features, self.out_indices = features, indices

    # -- derived values ------------------------------------------------------------------------

    @property
    def model_type(self) -> str:
        return "nat" if self.dilations is None else "dinat"

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i + 1}" for i in range(len(self.depths))]

    @property
    def num_layers(self) -> int:
        return len(self.depths)

    @property
    def hidden_size(self) -> int:
        """Channels after the last stage."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def block_dilations(self, stage: int) -> list[int]:
        return [1] * self.depths[stage] if self.dilations is None else list(self.dilations[stage])

    # -- variants and copies -------------------------------------------------------------------

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> NatConfig:
        """A named variant (see :data:`VARIANTS`) with fields overridden."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known variants: {list_variants()}")
        return cls.from_dict({**VARIANTS[name], **overrides})

    def replace(self, **changes: Any) -> NatConfig:
        """A validated copy with fields changed.

        A new num_labels alone resets id2label; new out_features alone re-derive out_indices
        (and the other way round).
        """
        if (
            "num_labels" in changes
            and "id2label" not in changes
            and changes["num_labels"] != self.num_labels
        ):
            changes["id2label"] = None
        for name, other in (("out_features", "out_indices"), ("out_indices", "out_features")):
            if name in changes and other not in changes:
                changes[other] = None
        return self.from_dict({**self.to_fields(), **changes})

    def to_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # -- transformers' config.json -------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NatConfig:
        """Build from our fields or a transformers config dict; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - _DERIVED_KEYS - _IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown NatConfig fields {unknown}; fields are {sorted(known)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        model_type = data.get("model_type")
        if model_type not in (None, "nat", "dinat"):
            raise ValueError(f"model_type must be 'nat' or 'dinat', got model_type={model_type!r}")
        if model_type == "nat" and kwargs.get("dilations") is not None:
            raise ValueError(
                f"model_type='nat' has no dilations, got dilations={kwargs['dilations']}; "
                "use model_type='dinat'"
            )
        if model_type == "dinat" and kwargs.get("dilations") is None:
            kwargs["dilations"] = DINAT_DEFAULT_DILATIONS
        config = cls(**kwargs)
        for key in ("hidden_size", "num_layers", "stage_names"):
            if key in data and data[key] != getattr(config, key):
                raise ValueError(
                    f"{key}={data[key]!r} disagrees with the other fields, which give "
                    f"{key}={getattr(config, key)!r}"
                )
        return config

    def to_dict(self, architectures: list[str] | None = None) -> dict[str, Any]:
        """transformers' config.json content; ``architectures`` defaults to the classifier."""
        out = {
            k: v
            for k, v in self.to_fields().items()
            if k not in ("attention_backend", "num_labels")
        }
        if self.dilations is None:
            del out["dilations"]
        prefix = "Nat" if self.model_type == "nat" else "Dinat"
        out.update(
            model_type=self.model_type,
            architectures=architectures or [f"{prefix}ForImageClassification"],
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            stage_names=self.stage_names,
            id2label={str(k): v for k, v in self.id2label.items()},
            label2id={v: k for k, v in self.id2label.items()},
        )
        return dict(sorted(out.items()))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> NatConfig:
        """Read a transformers config.json (model_type ``nat`` or ``dinat``).

        Keys that transformers' PretrainedConfig writes for every model (``return_dict``,
        ``chunk_size_feed_forward``, ...) are skipped; model_type must be present.
        """
        data = json.loads(Path(path).read_text())
        if data.get("model_type") not in ("nat", "dinat"):
            raise ValueError(
                f"{path}: model_type must be 'nat' or 'dinat', "
                f"got model_type={data.get('model_type')!r}"
            )
        known = {f.name for f in dataclasses.fields(cls)} | _DERIVED_KEYS
        return cls.from_dict(
            {k: v for k, v in data.items() if k in known and k != "attention_backend"}
        )

    @classmethod
    def from_pretrained_dir(cls, directory: str | os.PathLike) -> NatConfig:
        """The config.json of a transformers-layout folder."""
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} has no config.json (expected a transformers-layout folder)"
            )
        return cls.from_json(path)

    def save(self, path: str | os.PathLike, architectures: list[str] | None = None) -> Path:
        """Write config.json atomically; ``path`` is a folder or a file name. Returns the file."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / "config.json"
        text = json.dumps(self.to_dict(architectures), indent=2) + "\n"
        write_atomically(path, lambda tmp: Path(tmp).write_text(text))
        return path


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")


def _check_stage_selection(names: list[str], features: list | None, indices: list | None) -> None:
    """out_features/out_indices: known stages, no repeats, in stage order."""
    for name, values in (("out_features", features), ("out_indices", indices)):
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"{name} must not repeat a stage, got {name}={values}")
    if features is not None:
        if any(f not in names for f in features):
            raise ValueError(
                f"out_features must be among stage_names={names}, got out_features={features}"
            )
        if features != sorted(features, key=names.index):
            raise ValueError(
                f"out_features must follow the stage order {names}, got out_features={features}"
            )
    if indices is not None:
        if any(not isinstance(i, int) or not -len(names) <= i < len(names) for i in indices):
            raise ValueError(
                f"out_indices must index stage_names={names}, got out_indices={indices}"
            )
        positive = [i % len(names) for i in indices]
        if positive != sorted(positive):
            raise ValueError(f"out_indices must follow the stage order, got out_indices={indices}")


# -- named variants: the papers' numbers (NAT: arXiv 2204.07143, DiNAT: arXiv 2209.15001) ------


def _dinat_dilations(depths: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Blocks alternate NA (dilation 1) and DiNA with dilation 8, 4, 2, 1 by stage: at 224 px the
    stages are 56, 28, 14, 7 tokens wide, so kernel 7 x dilation spans the whole map."""
    return tuple(
        tuple(1 if j % 2 == 0 else d for j in range(n)) for d, n in zip((8, 4, 2, 1), depths)
    )


_MINI, _DEEP = (3, 4, 6, 5), (3, 4, 18, 5)
_NAT = {
    "nat_mini": {
        "embed_dim": 64,
        "depths": _MINI,
        "num_heads": (2, 4, 8, 16),
        "mlp_ratio": 3.0,
        "drop_path_rate": 0.2,
    },
    "nat_tiny": {
        "embed_dim": 64,
        "depths": _DEEP,
        "num_heads": (2, 4, 8, 16),
        "mlp_ratio": 3.0,
        "drop_path_rate": 0.2,
    },
    "nat_small": {
        "embed_dim": 96,
        "depths": _DEEP,
        "num_heads": (3, 6, 12, 24),
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.3,
        "layer_scale_init_value": 1e-5,
    },
    "nat_base": {
        "embed_dim": 128,
        "depths": _DEEP,
        "num_heads": (4, 8, 16, 32),
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.5,
        "layer_scale_init_value": 1e-5,
    },
}
_DINAT = {
    "dinat_mini": {**_NAT["nat_mini"], "dilations": _dinat_dilations(_MINI)},
    "dinat_tiny": {**_NAT["nat_tiny"], "dilations": _dinat_dilations(_DEEP)},
    # SHI-Labs' dinat.py trains DiNAT-Small without layer scale (NAT-Small has it)
    "dinat_small": {
        **_NAT["nat_small"],
        "layer_scale_init_value": 0.0,
        "dilations": _dinat_dilations(_DEEP),
    },
    "dinat_base": {**_NAT["nat_base"], "dilations": _dinat_dilations(_DEEP)},
    "dinat_large": {
        "embed_dim": 192,
        "depths": _DEEP,
        "num_heads": (6, 12, 24, 48),
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.35,
        "dilations": _dinat_dilations(_DEEP),
    },
}
_EXTRA = {
    # not from a paper: a ~0.4M-parameter NAT for 32 px inputs that trains on a CPU in a minute
    "nat_pico": {
        "embed_dim": 32,
        "depths": (2, 2, 2),
        "num_heads": (2, 4, 8),
        "kernel_size": 3,
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.0,
    },
}
VARIANTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(fields) for name, fields in {**_NAT, **_DINAT, **_EXTRA}.items()}
)


def list_variants() -> list[str]:
    """Names accepted by :func:`get_variant` / :meth:`NatConfig.from_variant`."""
    return sorted(VARIANTS)


def get_variant(name: str, **overrides: Any) -> NatConfig:
    """``NatConfig.from_variant(name, **overrides)``."""
    return NatConfig.from_variant(name, **overrides)
