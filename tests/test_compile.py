"""torch.compile: the compiled network equals eager mode, values and gradients, and the real CLI
trains with ``--model.compile true``. Neighborhood attention is one opaque op in the graph
(nat_lightning.ops.rows); inductor compiles the rest."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from tests.models.test_nat import relative_error, tiny
from tests.test_journeys import cli

from nat_lightning import NatForImageClassification
from nat_lightning.models.nat import NeighborhoodAttention2D

REL = 1e-4  # max |error| / max |expected|, per tensor: fp32, inductor reorders sums


@pytest.mark.slow  # about 35 s of compilation with a cold inductor cache
def test_compiled_network_matches_eager_values_and_gradients():
    """One graph (fullgraph: no break), a dynamic batch, rpb and dilation: logits, loss and every
    parameter's gradient, rpb's included, equal eager mode's."""
    torch.manual_seed(0)
    # 64 px: stage 1 is 16x16 (row kernel), stage 2 8x8 with dilation 2 (groups of 4x4, row kernel);
    # one block a stage: each block more is more kernels for inductor to compile (cold: ~1 s each)
    eager = NatForImageClassification(tiny(depths=[1, 1], dilations=[[1], [2]], drop_path_rate=0.0))
    for module in eager.modules():
        if isinstance(module, NeighborhoodAttention2D):  # zero at init: give the bias values
            torch.nn.init.normal_(module.rpb, std=0.5)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True)
    # no on-disk caches: an entry another run left for the same graph can carry guards that pin
    # the batch, which mark_dynamic then reports as an error
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        _compare(eager, twin, compiled)


def _compare(eager, twin, compiled) -> None:
    """Two batch sizes through both networks: logits, loss and every gradient."""
    for batch in (3, 2):
        images, labels = torch.randn(batch, 3, 64, 64), torch.randint(0, 4, (batch,))
        for t in (images, labels):  # a dynamic batch, as Lightning's shorter last batch makes it
            torch._dynamo.mark_dynamic(t, 0)
        results = []
        for net, run in ((eager, eager), (twin, compiled)):
            net.zero_grad(set_to_none=True)
            out = run(images, labels)
            out.loss.backward()
            results.append(
                {
                    "logits": out.logits.detach(),
                    "loss": out.loss.detach(),
                    **{name: p.grad for name, p in net.named_parameters()},
                }
            )
        expected, got = results
        assert any(".rpb" in name for name in got)
        for name, value in expected.items():
            assert relative_error(got[name], value) < REL, (
                batch,
                name,
                relative_error(got[name], value),
            )


@pytest.mark.slow
def test_cli_fits_with_compile(tmp_path):
    """``fit --model.compile true`` on the quickstart config exits 0 and reports val/acc1. The
    smallest network that still has a neighborhood-attention block (one stage, one block, no drop
    path, 16 px) and one batch each of training and validation: inductor compiles a C++ kernel per
    fused op of the training and the evaluation graph, about 1 s each with a cold cache (nat_pico
    at 32 px: 100 s; this: 40 s)."""
    network = (
        '{"embed_dim": 16, "depths": [1], "num_heads": [1], "kernel_size": 3, '
        '"mlp_ratio": 1.0, "drop_path_rate": 0.0}'
    )
    out = cli(
        "fit",
        "--config",
        "configs/quickstart.yaml",
        "--model.compile",
        "true",
        "--model.model",
        network,
        "--data.image_size",
        "16",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        timeout=900,
    )
    logged = [
        row["val/acc1"]
        for path in tmp_path.rglob("metrics.csv")
        for row in csv.DictReader(path.open())
        if row.get("val/acc1")
    ]
    assert "val/acc1" in out or logged, out[-3000:]
    assert all(0.0 <= float(value) <= 1.0 for value in logged)
