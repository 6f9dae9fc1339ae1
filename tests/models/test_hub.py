"""Hub ids: the cache, HF_HUB_OFFLINE, and the error when neither can serve."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from tests.conftest import FIXTURES

from nat_lightning import NatForImageClassification
from nat_lightning.models.hub import resolve_pretrained

NAT = FIXTURES / "hf_nat_tiny_random"


def test_offline_and_not_cached_is_a_clear_error(tmp_path):
    """HF_HUB_OFFLINE and HF_HOME as a user sets them: in the environment, before Python starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = (
        "from nat_lightning import NatForImageClassification\n"
        "NatForImageClassification.from_pretrained('shi-labs/nat-mini-in1k-224')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "OSError: could not load 'shi-labs/nat-mini-in1k-224' from the Hugging Face Hub"
    )
    assert f"not in the local cache ({tmp_path / 'hf' / 'hub'})" in message
    assert "HF_HUB_OFFLINE is set" in message and "download it once with network access" in message


def test_a_cached_repo_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--shi-labs--nat-test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(
        NAT,
        repo / "snapshots" / commit,
        ignore=shutil.ignore_patterns("model.safetensors", "expected*"),
    )
    assert (
        resolve_pretrained("shi-labs/nat-test", cache_dir=tmp_path) == repo / "snapshots" / commit
    )
    model = NatForImageClassification.from_pretrained(
        "shi-labs/nat-test", cache_dir=tmp_path
    )  # pytorch_model.bin
    reference = NatForImageClassification.from_pretrained(NAT)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(
        OSError, match="'shi-labs/other' from the Hugging Face Hub: it is not in the local cache"
    ):
        NatForImageClassification.from_pretrained("shi-labs/other", cache_dir=tmp_path)


@pytest.mark.parametrize(
    "source", ["a/b/c", "model.safetensors", "owner/weights.pth", "./run/best"]
)
def test_what_is_not_a_repo_id_is_not_sent_to_the_hub(source):
    with pytest.raises(
        FileNotFoundError, match="does not exist, and it is not a Hugging Face Hub repo id"
    ):
        resolve_pretrained(source)
