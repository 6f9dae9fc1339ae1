"""Run by test_ddp.py as ``python -m tests.tasks.ddp_run OUT_DIR MODE``: two processes (gloo on
the CPU) fit a tiny NatClassifier on the embedded digits and write what the test checks to OUT_DIR.

MODE ``freeze_backbone`` or ``linear_probe``: DDP, 3 steps an epoch for 2 epochs (the backbone
thaws at epoch 1 in the first mode, never in the second). Each rank writes the network's weights
at the start and after each epoch, with the names of the parameters that have AdamW state and of
those that require grad.

MODE ``fsdp``: configs/fsdp_gpus.yaml's strategy settings on the CPU, 3 steps. Each rank writes
every parameter's optimizer group (weight decay, LR scale) and the shape it had there."""

import importlib
import json
import sys
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.strategies import FSDPStrategy

from nat_lightning import NatConfig
from nat_lightning.data import quickstart_datamodule
from nat_lightning.tasks import NatClassifier

ROOT = Path(__file__).resolve().parents[2]
TINY = NatConfig(
    embed_dim=16,
    depths=[1, 1],
    num_heads=[1, 2],
    kernel_size=3,
    mlp_ratio=1.0,
    drop_path_rate=0.0,
    layer_scale_init_value=1e-5,
)
FSDP_WRAPPER = "_fsdp_wrapped_module."  # in the names of the parameters below each wrapped block


class Snapshots(L.Callback):
    def __init__(self, out: str):
        self.out = Path(out)

    def _save(self, trainer, pl_module, tag: str) -> None:
        names = {id(p): n for n, p in pl_module.network.named_parameters()}
        with_state = sorted(names[id(p)] for p, s in trainer.optimizers[0].state.items() if s)
        trainable = sorted(n for n, p in pl_module.network.named_parameters() if p.requires_grad)
        weights = {k: v.detach().clone() for k, v in pl_module.network.state_dict().items()}
        torch.save(
            {"weights": weights, "with_state": with_state, "trainable": trainable},
            self.out / f"rank{trainer.global_rank}-{tag}.pt",
        )

    def on_train_start(self, trainer, pl_module):
        self._save(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer, pl_module):
        self._save(trainer, pl_module, f"epoch{trainer.current_epoch}")


class GroupsRecord(L.Callback):
    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_start(self, trainer, pl_module):
        names = {
            id(p): n.replace(FSDP_WRAPPER, "") for n, p in pl_module.network.named_parameters()
        }
        rows = [
            {
                "name": names[id(p)],
                "weight_decay": g["weight_decay"],
                "lr_scale": g["lr_scale"],
                "shape": list(p.shape),
            }
            for g in trainer.optimizers[0].param_groups
            for p in g["params"]
        ]
        wrapped = any(FSDP_WRAPPER in n for n, _ in pl_module.network.named_parameters())
        path = self.out / f"rank{trainer.global_rank}-groups.json"
        path.write_text(json.dumps({"groups": rows, "wrapped": wrapped}))

    def on_train_end(self, trainer, pl_module):
        path = self.out / f"rank{trainer.global_rank}-end.json"
        path.write_text(
            json.dumps(
                {"step": trainer.global_step, "loss": float(trainer.callback_metrics["train/loss"])}
            )
        )


class CpuFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on the CPU. Lightning refuses FSDP without a GPU (by the exact
    type, so a subclass passes) and hands torch's FSDP ``device_id=None``, which torch takes as
    "the accelerator"; here torch gets the CPU as the device, and nothing else changes."""

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        init = FullyShardedDataParallel.__init__

        def on_cpu(fsdp, *args, device_id=None, **kwargs):
            init(fsdp, *args, device_id=torch.device("cpu"), **kwargs)

        FullyShardedDataParallel.__init__ = on_cpu
        try:
            return super()._setup_model(model)
        finally:
            FullyShardedDataParallel.__init__ = init


def config_fsdp_strategy() -> CpuFSDPStrategy:
    """configs/fsdp_gpus.yaml's strategy arguments, its wrap policy's class paths imported."""
    config = yaml.safe_load((ROOT / "configs" / "fsdp_gpus.yaml").read_text())
    args = dict(config["trainer"]["strategy"]["init_args"])
    policy = set()
    for path in args.pop("auto_wrap_policy"):
        module, name = path.rsplit(".", 1)
        policy.add(getattr(importlib.import_module(module), name))
    if "timeout" in args:  # "H:MM:SS", as the CLI (jsonargparse) reads it into a timedelta
        hours, minutes, seconds = (int(part) for part in args["timeout"].split(":"))
        args["timeout"] = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    return CpuFSDPStrategy(auto_wrap_policy=policy, **args)


def main(out: str, mode: str) -> None:
    L.seed_everything(0)
    fsdp = mode == "fsdp"
    model = NatClassifier(
        model=TINY,
        num_classes=10,
        lr=1e-2,
        warmup_steps=0,
        layer_decay=0.5 if fsdp else None,
        finetune="full" if fsdp else mode,
        unfreeze_at_epoch=1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=config_fsdp_strategy() if fsdp else "ddp",
        max_epochs=2,
        max_steps=3 if fsdp else -1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[GroupsRecord(out) if fsdp else Snapshots(out)],
    )
    trainer.fit(
        model, datamodule=quickstart_datamodule(image_size=16, batch_size=16, num_workers=0)
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
