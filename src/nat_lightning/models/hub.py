"""Where pretrained weights come from: a local path, or a Hugging Face Hub repo id.

Hub downloads go through huggingface_hub's cache, so ``HF_HOME``/``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE=1`` work as everywhere else; failures become one error that names the id and
says how to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json")


def resolve_pretrained(
    source: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """An existing local file or folder as is; ``owner/name`` from the Hub (or its cache)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not _REPO_ID.match(text) or text.endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(
            f"pretrained={text!r} does not exist, and it is not a Hugging Face Hub repo "
            "id ('owner/name') either"
        )
    return download(text, revision, cache_dir)


def download(
    repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """config.json, preprocessor_config.json if there is one, and the first of WEIGHT_FILES the
    repo has; returns the snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError  # .utils re-exports in every version

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))

    try:
        folder = fetch("config.json").parent
        try:  # optional: the preprocessing fine-tuning adopts (nat_lightning.tasks.network)
            fetch("preprocessor_config.json")
        except EntryNotFoundError:
            pass
        for name in WEIGHT_FILES:
            try:
                fetch(name)
                return folder
            except EntryNotFoundError as err:  # not in the repo, or (offline) not in the cache
                last = err
        raise last
    # connection failures surface as LocalEntryNotFoundError (an OSError), HTTP ones as
    # HfHubHTTPError (an OSError), malformed ids as HFValidationError (a ValueError)
    except (OSError, EntryNotFoundError, ValueError) as err:
        raise OSError(_explain(repo_id, err, cache_dir)) from err


def _explain(repo_id: str, err: Exception, cache_dir: str | os.PathLike | None) -> str:
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    head = f"could not load {repo_id!r} from the Hugging Face Hub"
    if isinstance(err, LocalEntryNotFoundError) or constants.HF_HUB_OFFLINE:
        why = f"it is not in the local cache ({cache_dir or constants.HF_HUB_CACHE}) and " + (
            "HF_HUB_OFFLINE is set, so nothing is downloaded"
            if constants.HF_HUB_OFFLINE
            else "the Hub could not be reached"
        )
        fix = (
            f"download it once with network access (e.g. `hf download {repo_id}` with "
            "HF_HUB_OFFLINE unset), point HF_HOME at a cache that has it, or pass a local folder "
            "with config.json and model.safetensors"
        )
    elif isinstance(err, RevisionNotFoundError):
        why, fix = "the revision does not exist", "check the revision argument"
    elif isinstance(err, RepositoryNotFoundError):
        why = "the repo does not exist or is private/gated"
        fix = "check the id, or log in with `hf auth login` if it is private"
    elif isinstance(err, EntryNotFoundError):
        why = f"the repo has config.json but none of {list(WEIGHT_FILES)}"
        fix = "check that it is a transformers NAT/DiNAT repo"
    else:
        why, fix = "the download failed", "check your network connection and try again"
    return f"{head}: {why}. Fix: {fix}. ({type(err).__name__}: {err})"
