"""Loading and saving weights: transformers' layout, SHI-Labs' original layout, the Hub.

Our modules carry the original names (``levels.0.blocks.1.attn.qkv``); transformers splits
``qkv`` into query/key/value, stacks the two layer scales, and renames the rest. Nothing here
unpickles code: safetensors, or ``torch.load(weights_only=True)`` for ``.bin``/``.pth`` files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

from .config import NatConfig

log = logging.getLogger(__name__)

# ours <-> transformers, inside one encoder (keys without the "nat."/"dinat." prefix)
_RENAMES = [
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("patch_embed.norm.", "embeddings.norm."),
    ("levels.{i}.blocks.{j}.norm1.", "encoder.levels.{i}.layers.{j}.layernorm_before."),
    ("levels.{i}.blocks.{j}.attn.rpb", "encoder.levels.{i}.layers.{j}.attention.self.rpb"),
    ("levels.{i}.blocks.{j}.attn.proj.", "encoder.levels.{i}.layers.{j}.attention.output.dense."),
    ("levels.{i}.blocks.{j}.norm2.", "encoder.levels.{i}.layers.{j}.layernorm_after."),
    ("levels.{i}.blocks.{j}.mlp.fc1.", "encoder.levels.{i}.layers.{j}.intermediate.dense."),
    ("levels.{i}.blocks.{j}.mlp.fc2.", "encoder.levels.{i}.layers.{j}.output.dense."),
    ("levels.{i}.downsample.", "encoder.levels.{i}.downsample."),
    ("norm.", "layernorm."),
]
_QKV = "levels.{i}.blocks.{j}.attn.qkv."
_HF_QKV = "encoder.levels.{i}.layers.{j}.attention.self.{part}."
_GAMMA = "levels.{i}.blocks.{j}.gamma{n}"
_HF_GAMMA = "encoder.levels.{i}.layers.{j}.layer_scale_parameters"


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name in ("i", "j", "n", "part"):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[a-z0-9]+)")
    return re.compile("^" + pattern)


def _convert(key: str, rules: list[tuple[str, str]]) -> str:
    for src, dst in rules:
        if m := _regex(src).match(key):
            return dst.format(**m.groupdict()) + key[m.end():]
    return key


def encoder_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder keys -> transformers' (qkv split, gammas stacked)."""
    out, gammas = {}, {}
    for key, value in state.items():
        if m := _regex(_QKV).match(key):
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[_HF_QKV.format(part=part, **m.groupdict()) + key[m.end():]] = chunk.contiguous()
        elif m := _regex(_GAMMA).match(key):
            gammas.setdefault(_HF_GAMMA.format(i=m["i"], j=m["j"]), {})[m["n"]] = value
        else:
            out[_convert(key, _RENAMES)] = value
    for key, pair in gammas.items():
        out[key] = torch.stack([pair["1"], pair["2"]])
    return out


def encoder_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' encoder keys -> ours (query/key/value fused, layer scales unstacked)."""
    out, qkv = {}, {}
    reverse = [(dst, src) for src, dst in _RENAMES]
    for key, value in state.items():
        if m := _regex(_HF_QKV).match(key):
            qkv.setdefault(_QKV.format(i=m["i"], j=m["j"]) + key[m.end():], {})[m["part"]] = value
        elif m := _regex(_HF_GAMMA).match(key):
            for n, gamma in zip("12", value.unbind(0)):
                out[_GAMMA.format(i=m["i"], j=m["j"], n=n)] = gamma
        else:
            out[_convert(key, reverse)] = value
    for key, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"checkpoint has a partial attention projection for {key}: found {sorted(parts)}")
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


# -- reading files --------------------------------------------------------------------------------

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or .bin/.pth/.pt through torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ValueError(f"{path} could not be read as a weights-only checkpoint: {err}") from err
    for nest in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(nest), dict):
            state = state[nest]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def resolve(path_or_id: str) -> Path:
    """A local file or folder as is; anything else is a Hub repo id, downloaded or cached."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1:
        raise FileNotFoundError(f"pretrained={path_or_id!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(
            path_or_id, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin", "preprocessor_config.json"]
        ))
    except Exception as err:  # offline, not cached, unknown repo, gated, no network
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        hint = ("HF_HUB_OFFLINE is set and the repo is not in the local cache; download it once with "
                "network access" if offline else "check the repo id, your network and `huggingface-cli login`")
        raise OSError(f"could not load pretrained={path_or_id!r} from the Hugging Face Hub: {hint}. ({err})") from err


def read_checkpoint(path: Path, config: NatConfig | None) -> tuple[NatConfig, dict[str, torch.Tensor], str]:
    """(config, tensors, layout) from a transformers folder or an original state-dict file."""
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json (expected a transformers-layout folder)")
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return NatConfig.from_json(path / "config.json"), read_state_dict(path / name), "transformers"
        raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    if config is None:
        raise ValueError(f"{path} is a bare state dict (original layout): pass config=NatConfig(...) "
                         "or a variant, e.g. NatConfig.from_variant('nat_mini', num_labels=1000)")
    state = read_state_dict(path)
    if any(k.startswith(("embeddings.", "nat.", "dinat.", "encoder.")) for k in state):
        return config, state, "transformers"
    return config, state, "original"


def to_ours(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Any supported layout -> our classifier keys (``nat.*``, ``head.*``, ``out_norms.*``)."""
    if layout == "original":
        return {(k if k.startswith("head.") else f"nat.{k}"): v for k, v in state.items()}
    encoder, out = {}, {}
    for key, value in state.items():
        key = re.sub(r"^(nat|dinat)\.", "", key)
        if key.startswith("classifier."):
            out["head." + key[len("classifier."):]] = value
        elif key.startswith("hidden_states_norms."):
            out["out_norms." + key[len("hidden_states_norms."):]] = value
        else:
            encoder[key] = value
    out.update({f"nat.{k}": v for k, v in encoder_from_hf(encoder).items()})
    return out


def to_transformers(state: dict[str, torch.Tensor], kind: str, model_type: str) -> dict[str, torch.Tensor]:
    """Our keys -> transformers' for ``kind`` in model / classifier / backbone."""
    encoder = {k[len("nat."):]: v for k, v in state.items() if k.startswith("nat.")}
    prefix = f"{model_type}." if kind == "classifier" else ""
    out = {prefix + k: v for k, v in encoder_to_hf(encoder).items()}
    for key, value in state.items():
        if key.startswith("head."):
            out["classifier." + key[len("head."):]] = value
        elif key.startswith("out_norms."):
            out["hidden_states_norms." + key[len("out_norms."):]] = value
    return out


# -- the mixin the three model classes share ----------------------------------------------------

_ARCHITECTURES = {"model": "{}Model", "classifier": "{}ForImageClassification", "backbone": "{}Backbone"}


class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` for NatModel, NatForImageClassification, NatBackbone."""

    def _canonical(self, key: str) -> str:
        return key if self._kind != "model" else f"nat.{key}"

    @property
    def _kind(self) -> str:
        name = type(self).__name__
        return "classifier" if "Classification" in name else "backbone" if "Backbone" in name else "model"

    @classmethod
    def from_pretrained(cls, pretrained: str | os.PathLike, config: NatConfig | None = None,
                        num_labels: int | None = None, id2label: dict[int, str] | None = None, **overrides):
        """Load a transformers folder, a Hub id, or an original ``.pth`` (with ``config``).

        ``num_labels``/``id2label`` different from the checkpoint's give a new, freshly
        initialised head (logged). ``overrides`` change config fields (e.g. drop_path_rate).
        Missing, unexpected or mis-shaped weights are an error that lists them.
        """
        path = resolve(str(pretrained))
        file_config, state, layout = read_checkpoint(path, config)
        state = to_ours(state, layout)
        config = config or file_config
        if id2label is not None:
            num_labels = len(id2label)
        head = state.get("head.weight")
        changes = dict(overrides)
        if num_labels is not None and (head is None or num_labels != head.shape[0]):
            changes.update(num_labels=num_labels, id2label=id2label)
        elif id2label is not None:
            changes.update(id2label=id2label)
        elif head is not None and head.shape[0] != config.num_labels:
            changes.update(num_labels=head.shape[0])
        model = cls(config.replace(**changes) if changes else config)
        model._load_canonical(state, source=str(pretrained))
        return model

    def _load_canonical(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = {self._canonical(k): k for k in self.state_dict()}
        fresh = []  # parts this class adds on top of the checkpoint, initialised anew
        if self._kind != "classifier":
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        if self._kind == "backbone":
            state = {k: v for k, v in state.items() if not k.startswith("nat.norm.")}
        for part in ("head.", "out_norms."):
            head_shape = state.get(part + "weight", None)
            theirs = [k for k in state if k.startswith(part)]
            mine = [k for k in own if k.startswith(part)]
            if mine and (not theirs or (part == "head." and head_shape is not None
                                        and head_shape.shape[0] != self.config.num_labels)):
                state = {k: v for k, v in state.items() if not k.startswith(part)}
                fresh.append(part.rstrip("."))
        missing = sorted(k for k in own if k not in state and not k.startswith(tuple(f + "." for f in fresh)))
        unexpected = sorted(k for k in state if k not in own)
        if missing or unexpected:
            raise ValueError(f"checkpoint {source} does not fit the config: "
                             f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}")
        mine = self.state_dict()
        wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(mine[own[k]].shape)}"
                 for k, v in state.items() if v.shape != mine[own[k]].shape]
        if wrong:
            raise ValueError(f"checkpoint {source} does not fit the config: shape mismatches {_few(wrong)}")
        self.load_state_dict({own[k]: v for k, v in state.items()}, strict=False)
        for part in fresh:
            log.warning("%s: %s is newly initialised (%s)", source, part,
                        f"{self.config.num_labels} labels" if part == "head" else "not in the checkpoint")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """transformers' layout: config.json + model.safetensors, each written atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        kind, model_type = self._kind, self.config.model_type
        config = self.config.to_dict()
        config["architectures"] = [_ARCHITECTURES[kind].format("Nat" if model_type == "nat" else "Dinat")]
        state = {self._canonical(k): v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tensors = to_transformers(state, kind, model_type)
        _atomic(directory / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        _atomic(directory / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2)))


def _few(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit]) or "none"
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
