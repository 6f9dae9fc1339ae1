"""Checkpoint layouts and their key names: ours/SHI-Labs' original <-> transformers'.

Our modules carry the names of SHI-Labs' code, so an original state dict *is* our layout:

    patch_embed.proj.{0,1}, patch_embed.norm, norm, head
    levels.i.blocks.j.{norm1, attn.qkv, attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2,
                       gamma1, gamma2}
    levels.i.downsample.{reduction, norm}

transformers renames every module, splits ``qkv`` into query/key/value, stacks ``gamma1``/``gamma2``
into ``layer_scale_parameters`` (2, C), calls the head ``classifier`` and, in the classifier,
prefixes the encoder with ``nat.`` or ``dinat.``. The backbone's per-stage norms are
``hidden_states_norms.<stage>`` in both layouts.

Conversion works on the "canonical" names above (no ``nat.`` prefix); each model class maps its
own ``state_dict()`` names onto them (see pretrained.py).
"""

from __future__ import annotations

import re

import torch

# (ours, transformers') inside the encoder; {i} is a stage, {j} a block. A name ending in "."
# renames a module (its weight/bias follow), any other name a single parameter.
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
    ("head.", "classifier."),
    ("hidden_states_norms.", "hidden_states_norms."),
]
# the two that change shape: fused qkv <-> query/key/value, gamma1/gamma2 <-> (2, C)
_QKV = re.compile(r"levels\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(
    r"encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"
)
_GAMMA = re.compile(r"levels\.(\d+)\.blocks\.(\d+)\.gamma([12])$")
_HF_GAMMA = re.compile(r"encoder\.levels\.(\d+)\.layers\.(\d+)\.layer_scale_parameters$")
_ENCODER_PREFIXES = ("patch_embed.", "levels.", "norm.")


def _pattern(template: str) -> re.Pattern:
    """ "levels.{i}.blocks.{j}.norm1." -> a regex that captures i and j."""
    pattern = (
        re.escape(template)
        .replace(re.escape("{i}"), r"(?P<i>\d+)")
        .replace(re.escape("{j}"), r"(?P<j>\d+)")
    )
    return re.compile("^" + pattern + ("" if template.endswith(".") else "$"))


_TO_HF = [(_pattern(ours), theirs) for ours, theirs in _RENAMES]
_FROM_HF = [(_pattern(theirs), ours) for ours, theirs in _RENAMES]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in rules:
        if m := pattern.match(key):
            return target.format(**m.groupdict()) + key[m.end() :]
    return None


def to_transformers(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Canonical keys -> transformers'; ``prefix`` (``nat.``/``dinat.``) goes before the encoder."""
    out: dict[str, torch.Tensor] = {}
    gammas: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name_prefix = prefix if key.startswith(_ENCODER_PREFIXES) else ""
        if m := _QKV.match(key):
            stage, block, kind = m.groups()
            for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                hf = f"encoder.levels.{stage}.layers.{block}.attention.self.{part}.{kind}"
                out[name_prefix + hf] = chunk.contiguous()
        elif m := _GAMMA.match(key):
            stage, block, n = m.groups()
            hf = f"encoder.levels.{stage}.layers.{block}.layer_scale_parameters"
            gammas.setdefault(name_prefix + hf, {})[n] = value
        elif (hf := _rename(key, _TO_HF)) is not None:
            out[name_prefix + hf] = value
        else:
            raise ValueError(f"no transformers name for parameter {key!r}")
    for key, pair in gammas.items():
        out[key] = torch.stack([pair["1"], pair["2"]])  # (2, C): attention, MLP
    return out


def from_transformers(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """transformers' keys (any of the three classes) -> canonical keys.

    Returns the tensors and, for each canonical key, the checkpoint key(s) it came from; keys
    that match no rule are passed through under their own name (they surface as unexpected).
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for source, value in state.items():
        key = re.sub(r"^(nat|dinat)\.", "", source)
        if m := _HF_QKV.match(key):
            stage, block, part, kind = m.groups()
            ours = f"levels.{stage}.blocks.{block}.attn.qkv.{kind}"
            parts.setdefault(ours, {})[part] = value
            origin[ours] = source.replace(f".{part}.", ".{query,key,value}.")
        elif m := _HF_GAMMA.match(key):
            stage, block = m.groups()
            if value.ndim != 2 or value.shape[0] != 2:
                raise ValueError(
                    f"{source} must have shape (2, channels), got {tuple(value.shape)}"
                )
            for n, gamma in enumerate(value.unbind(0)):  # row 0 scales attention, row 1 the MLP
                out[f"levels.{stage}.blocks.{block}.gamma{n + 1}"] = gamma
                origin[f"levels.{stage}.blocks.{block}.gamma{n + 1}"] = f"{source}[{n}]"
        else:
            ours = _rename(key, _FROM_HF) or source
            out[ours], origin[ours] = value, source
    for key, found in parts.items():
        if set(found) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(found))
            raise ValueError(f"checkpoint lacks the {missing} projection(s) of {origin[key]}")
        out[key] = torch.cat([found["query"], found["key"], found["value"]])  # (3C, C) or (3C,)
    return out, origin


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"transformers"`` or ``"original"`` from the key names of a state dict."""
    keys = list(state)
    if any(k.startswith(("nat.", "dinat.", "embeddings.", "encoder.")) for k in keys):
        return "transformers"
    if any(k.startswith(("patch_embed.", "levels.")) for k in keys):
        return "original"
    raise ValueError(
        f"unrecognised checkpoint layout: expected transformers' keys (nat.embeddings..., "
        f"encoder.levels...) or SHI-Labs' (patch_embed..., levels...), got {keys[:8]}"
    )


def to_canonical(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Any supported layout -> canonical keys, with the checkpoint key each one came from."""
    if detect_layout(state) == "transformers":
        return from_transformers(state)
    return dict(state), {k: k for k in state}
