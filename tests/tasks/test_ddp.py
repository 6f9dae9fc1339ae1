"""A real 2-process DDP fit on the CPU (gloo): map-style data, metrics synced across ranks."""

import signal

import lightning as L
import pytest
import torch

from nat_lightning import NatConfig
from nat_lightning.tasks import NatClassifier

from .test_classifier import digits

TINY = NatConfig(embed_dim=8, depths=[1], num_heads=[1], kernel_size=3, mlp_ratio=1.0, drop_path_rate=0.0)


@pytest.mark.slow
def test_ddp_fit_syncs_validation_metrics_across_ranks(tmp_path):
    torch.manual_seed(0)
    dm = digits(image_size=16, batch_size=30)  # 180 validation images: 90 per rank, no padding
    model = NatClassifier(model=TINY, num_classes=10, lr=3e-3, warmup_epochs=0.0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=5,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    signal.alarm(240)
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        signal.alarm(0)
    logged = float(trainer.callback_metrics["val/acc1"])
    # the oracle: the trained weights (returned from rank 0) evaluated on the whole split here
    dm.setup("fit")
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            correct += int((model(batch["pixel_values"]).argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    assert total == 180
    assert logged == pytest.approx(correct / total, abs=1e-6)
