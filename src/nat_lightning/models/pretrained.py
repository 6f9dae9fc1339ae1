"""``from_pretrained`` and ``save_pretrained`` for NatModel, NatForImageClassification, NatBackbone.

Loading is strict: every weight the model has must come from the checkpoint with the right shape,
and every tensor of the checkpoint must be used, with these deliberate exceptions (each logged):

- the classifier's ``head`` is freshly initialised when the checkpoint has none or when
  ``num_labels``/``id2label`` asks for a different number of classes;
- NatModel and NatBackbone ignore a checkpoint's ``head``; NatBackbone also ignores the final
  ``norm`` (transformers' backbone has none), initialises ``hidden_states_norms`` of the stages
  the checkpoint has no norm for, and ignores norms of stages it does not output;
- NatModel ignores a backbone checkpoint's ``hidden_states_norms``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..files import read_state_dict, write_atomically
from .checkpoints import to_canonical, to_transformers
from .config import NatConfig
from .hub import WEIGHT_FILES, resolve_pretrained

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def read_checkpoint(path: Path) -> tuple[NatConfig | None, dict[str, torch.Tensor]]:
    """(config.json's config or None, tensors) from a transformers folder or a weights file."""
    if path.is_dir():
        config = NatConfig.from_pretrained_dir(path)
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return config, read_state_dict(path / name)
        raise FileNotFoundError(f"{path} has none of {list(WEIGHT_FILES)}")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(
            f"{path}: expected a transformers folder or a weights file ending in "
            f"{_WEIGHT_SUFFIXES}, got suffix {path.suffix!r}"
        )
    return None, read_state_dict(path)


def _choose_config(
    config: NatConfig | str | None,
    file_config: NatConfig | None,
    source: str,
    head: torch.Tensor | None,
    num_labels: int | None,
    id2label: dict[int, str] | None,
    overrides: dict[str, Any],
) -> NatConfig:
    """The config to build: the caller's, else config.json's; the head size follows the
    checkpoint unless num_labels/id2label ask otherwise."""
    if isinstance(config, str):
        config = NatConfig.from_variant(config)
    config = config or file_config
    if config is None:
        raise ValueError(
            f"{source} is a bare state dict without a config.json: pass config=NatConfig(...) or "
            "a variant name, e.g. from_pretrained(path, config='nat_mini')"
        )
    if id2label is not None:
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(
                f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} "
                "entries; pass one of them"
            )
        num_labels = len(id2label)
    labels: dict[str, Any] = {}
    if num_labels is None and head is not None:
        num_labels = head.shape[0]
    if num_labels is not None and num_labels != config.num_labels:
        labels = {"num_labels": num_labels, "id2label": id2label}
    elif id2label is not None:
        labels = {"id2label": id2label}
    changes = {**overrides, **labels}
    return config.replace(**changes) if changes else config


class PretrainedMixin:
    """Loading and saving shared by the three model classes.

    A class sets ``_kind`` (``model``/``classifier``/``backbone``) and ``_prefix`` (the name of
    its encoder submodule, ``""`` or ``"nat."``) so that its ``state_dict()`` names map onto the
    canonical names of checkpoints.py.
    """

    config: NatConfig
    _kind: str = "model"
    _prefix: str = ""

    def _to_canonical_name(self, name: str) -> str:
        return name[len(self._prefix) :] if self._prefix and name.startswith(self._prefix) else name

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike,
        config: NatConfig | str | None = None,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> Self:
        """Load a transformers folder, a Hub repo id, or a weights file (any layout).

        Args:
            pretrained: a folder with config.json + model.safetensors (or pytorch_model.bin), a
                Hub id such as ``shi-labs/nat-mini-in1k-224``, or a ``.pth``/``.pt``/``.bin``/
                ``.safetensors`` state dict (SHI-Labs' keys, possibly under ``model`` or
                ``state_dict``), which needs ``config``.
            config: a NatConfig or variant name; overrides config.json when both exist.
            num_labels: classes of the head; a number other than the checkpoint's gives a new,
                freshly initialised head (logged). Default: the checkpoint's.
            id2label: class names; implies ``num_labels=len(id2label)``.
            revision, cache_dir: passed to huggingface_hub for Hub ids.
            overrides: NatConfig fields to change, e.g. ``drop_path_rate=0.1,
                attention_backend="torch"``; unknown names are an error.
        """
        source = str(pretrained)
        path = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir)
        file_config, raw = read_checkpoint(path)
        state, origin = to_canonical(raw)
        config = _choose_config(
            config, file_config, source, state.get("head.weight"), num_labels, id2label, overrides
        )
        model = cls(config)
        model._load_canonical(state, origin, source)
        return model

    def _load_canonical(
        self, state: dict[str, torch.Tensor], origin: dict[str, str], source: str
    ) -> None:
        own = {self._to_canonical_name(k): k for k in self.state_dict()}
        state = self._drop_unused(state, own, source)
        fresh = self._fresh_parts(state, source)
        what = f"{type(self).__name__}({self.config.model_type})"
        load_checked(self, state, origin, source, own, fresh, what)

    def _drop_unused(self, state: dict[str, torch.Tensor], own: dict[str, str], source: str):
        """Parts of a checkpoint this class has no place for, by design (see the module doc)."""
        unused = {
            "model": ("head.", "hidden_states_norms."),
            "classifier": ("head.", "hidden_states_norms."),
            "backbone": ("head.", "norm.", "hidden_states_norms."),
        }[self._kind]
        dropped = sorted(k for k in state if k.startswith(unused) and k not in own)
        if dropped:
            log.info("%s: %s does not use %s", source, type(self).__name__, _listing(dropped))
        return {k: v for k, v in state.items() if k not in dropped}

    def _fresh_parts(self, state: dict[str, torch.Tensor], source: str) -> tuple[str, ...]:
        """Prefixes of weights that keep their fresh initialisation: a new head, new stage norms."""
        fresh: list[str] = []
        if self._kind == "classifier" and self.config.num_labels > 0:
            theirs = state.get("head.weight")
            if theirs is None or theirs.shape[0] != self.config.num_labels:
                fresh.append("head.")
                why = "it has none" if theirs is None else f"its head has {theirs.shape[0]} classes"
                log.warning(
                    "%s: the classification head is newly initialised for num_labels=%d, as the "
                    "checkpoint does not fit (%s)",
                    source,
                    self.config.num_labels,
                    why,
                )
        if self._kind == "backbone":
            stages = [
                s
                for s in self.config.out_features
                if not any(k.startswith(f"hidden_states_norms.{s}.") for k in state)
            ]
            fresh += [f"hidden_states_norms.{s}." for s in stages]
            if stages:
                log.warning(
                    "%s: backbone norms of %s are newly initialised (not in the checkpoint)",
                    source,
                    stages,
                )
        return tuple(fresh)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write transformers' layout: config.json + model.safetensors, each atomically.

        The folder loads with ``from_pretrained`` here and with transformers' Nat*/Dinat* classes.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        family = "Nat" if self.config.model_type == "nat" else "Dinat"
        architecture = {
            "model": "Model",
            "classifier": "ForImageClassification",
            "backbone": "Backbone",
        }
        state = {
            self._to_canonical_name(k): v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
        }
        prefix = f"{self.config.model_type}." if self._kind == "classifier" else ""
        tensors = to_transformers(state, prefix)
        write_atomically(
            directory / "model.safetensors",
            lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        )
        self.config.save(directory, architectures=[family + architecture[self._kind]])
        return directory


def load_checked(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    origin: dict[str, str],
    source: str,
    own: dict[str, str],
    fresh: tuple[str, ...],
    what: str,
) -> None:
    """Load ``state`` into ``module`` strictly: every name of ``own`` (state's naming -> the
    module's) must be in ``state`` with the module's shape and nothing else may be, except names
    under the ``fresh`` prefixes, which keep their initialisation. ``origin`` gives the checkpoint
    key each state key came from, for the messages; ``what`` names the model in them."""
    state = {k: v for k, v in state.items() if not k.startswith(fresh)}
    missing = sorted(own[k] for k in own if k not in state and not k.startswith(fresh))
    unexpected = sorted(origin.get(k, k) for k in state if k not in own)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not fit {what}: "
            f"missing keys {_listing(missing)}; unexpected keys {_listing(unexpected)}"
        )
    mine = module.state_dict()
    wrong = [
        f"{origin.get(k, k)}: checkpoint {tuple(v.shape)} vs model {tuple(mine[own[k]].shape)}"
        for k, v in state.items()
        if v.shape != mine[own[k]].shape
    ]
    if wrong:
        raise ValueError(
            f"checkpoint {source} does not fit the config: shape mismatches {_listing(wrong)}"
        )
    module.load_state_dict({own[k]: v for k, v in state.items()}, strict=False)


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit]) or "none"
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"
