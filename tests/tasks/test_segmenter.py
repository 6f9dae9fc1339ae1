import types

import lightning as L
import numpy as np
import pytest
import torch
from tests.conftest import FIXTURES
from torch.utils.data import DataLoader

from nat_lightning import NatConfig, NatForImageClassification
from nat_lightning.data import SHAPES_CLASSES, shapes_datamodule
from nat_lightning.models import NatForSemanticSegmentation
from nat_lightning.tasks import NatClassifier, NatSegmenter

TINY = NatConfig(
    embed_dim=16,
    depths=[1, 1, 1, 1],
    num_heads=[1, 1, 2, 2],
    kernel_size=3,
    mlp_ratio=1.0,
    drop_path_rate=0.0,
)
HEADS = {"hidden_size": 16, "auxiliary_channels": 8}


def tiny(**kwargs):
    return NatSegmenter(model=TINY, **{**HEADS, **kwargs})


def trainer(tmp_path, **overrides):
    settings = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
    }
    return L.Trainer(**{**settings, **overrides})


def halves(n=8, size=32):
    """Images whose red channel says the class of each pixel: left half 0, right half 1."""
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, :, size // 2 :] = 1
    images = torch.randn(n, 3, size, size) * 0.1
    images[:, 0] += labels
    return [{"pixel_values": images[i], "labels": labels[i]} for i in range(n)]


def test_a_tiny_fit_on_the_embedded_shapes_and_its_checkpoint_restores(tmp_path):
    torch.manual_seed(0)
    model = tiny()  # no classes: the datamodule's
    t = trainer(tmp_path, limit_train_batches=3, limit_val_batches=2)
    t.fit(model, datamodule=shapes_datamodule(crop_size=32, eval_size=32, batch_size=8))
    assert model.id2label == dict(enumerate(SHAPES_CLASSES))
    logged = t.callback_metrics
    for key in (
        "train/loss",
        "val/loss",
        "val/miou",
        "val/pixel_acc",
        "val/iou/circle",
        "val/iou/ring",
    ):
        assert key in logged, key
    assert 0.0 <= float(logged["val/miou"]) <= 1.0 and float(logged["val/loss"]) > 0
    assert model.hparams.preprocessing == {"mean": [0.5] * 3, "std": [0.5] * 3}
    t.save_checkpoint(tmp_path / "seg.ckpt")
    loaded = NatSegmenter.load_from_checkpoint(tmp_path / "seg.ckpt", weights_only=True)
    assert loaded.id2label == model.id2label and loaded.network.config == model.network.config
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_the_default_model_fits_the_embedded_shapes_without_any_data(tmp_path):
    model = NatSegmenter()
    assert model.num_classes == len(SHAPES_CLASSES) and model.hparams.lr == 1e-3
    t = trainer(tmp_path)
    t.fit(model)
    assert "val/miou" in t.callback_metrics and "val/iou/triangle" in t.callback_metrics


def test_backbone_frozen_then_thawed(tmp_path):
    model = tiny(num_classes=2, finetune="freeze_backbone", unfreeze_at_epoch=1, warmup_epochs=0)
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append(
                (
                    pl_module.backbone.patch_embed.proj[0].weight.detach().clone(),
                    pl_module.network.decode_head.classifier.weight.detach().clone(),
                )
            )

    start = (
        model.backbone.patch_embed.proj[0].weight.detach().clone(),
        model.network.decode_head.classifier.weight.detach().clone(),
    )
    loader = DataLoader(halves(), batch_size=4)
    trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[Snapshot()]).fit(model, loader)
    assert torch.equal(snapshots[0][0], start[0]) and not torch.equal(snapshots[0][1], start[1])
    assert not torch.equal(snapshots[1][0], start[0])  # thawed at epoch 1


def test_optimizer_groups_of_the_network():
    model = tiny(num_classes=3, backbone_lr_mult=0.1, layer_decay=0.5, weight_decay=0.01)
    groups = model._param_groups()
    by_name = {}
    for name, param in model.network.named_parameters():
        (group,) = [g for g in groups if any(p is param for p in g["params"])]
        by_name[name] = group
    top = sum(TINY.depths) + 1  # heads and stage norms: layer id L+1
    for name, group in by_name.items():
        head = not name.startswith("backbone.")
        no_decay = name.endswith((".bias", ".rpb")) or "norm" in name  # LayerNorms, BatchNorms
        assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
        if head:
            assert group["lr_scale"] == 1.0, name
    assert by_name["decode_head.classifier.weight"]["weight_decay"] == 0.01
    assert by_name["backbone.levels.0.blocks.0.attn.rpb"]["weight_decay"] == 0.0
    assert by_name["backbone.patch_embed.proj.0.weight"]["lr_scale"] == pytest.approx(
        0.1 * 0.5**top
    )
    assert by_name["backbone.levels.2.blocks.0.mlp.fc1.weight"]["lr_scale"] == pytest.approx(
        0.1 * 0.5**2
    )


def test_predict_masks_are_cropped_to_the_content_and_resized_to_the_original():
    model = tiny(num_classes=3).eval()
    blocks = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1], [1, 0, 0, 2], [0, 0, 1, 1]])
    label_map = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)  # (8, 8) in 2x2 blocks
    padded = torch.full((8, 12), 2)
    padded[:, :8] = label_map
    model.forward = lambda x: (
        torch.nn.functional.one_hot(padded, 3)
        .permute(2, 0, 1)[None]
        .float()
        .expand(len(x), -1, -1, -1)
    )
    batch = {
        "pixel_values": torch.zeros(2, 3, 8, 12),
        "content": torch.tensor([[8, 8], [8, 12]]),
        "sizes": torch.tensor([[16, 16], [8, 12]]),
        "ids": ["a.png", "bad.png", "c.png"],
        "decoded": [True, False, True],
    }
    out = model.predict_step(batch, 0)
    assert out["ids"] == ["a.png", "bad.png", "c.png"] and out["errors"] == [
        None,
        "undecodable image",
        None,
    ]
    expected = np.repeat(np.repeat(label_map.numpy(), 2, 0), 2, 1)  # nearest, by hand
    np.testing.assert_array_equal(out["masks"][0].numpy(), expected)
    np.testing.assert_array_equal(out["masks"][1].numpy(), padded.numpy())
    assert out["masks"][0].dtype == torch.uint8


def test_an_empty_batch_is_skipped_in_every_stage():
    model = tiny(num_classes=3)
    empty = {
        "pixel_values": torch.zeros(0, 3, 32, 32),
        "labels": torch.zeros(0, 32, 32, dtype=torch.long),
    }
    assert model.training_step(empty, 0) is None
    model.log = lambda *a, **k: None
    model._evaluate("val", empty)
    assert model.losses["val"].weight.item() == 0
    out = model.predict_step({**empty, "ids": ["a", "b"], "decoded": [False, False]}, 0)
    assert out["masks"] == [] and out["errors"] == ["undecodable image"] * 2


def test_sliding_window_inference_in_the_module():
    x = torch.randn(1, 3, 32, 32)
    whole = tiny(num_classes=3).eval()
    slide = tiny(num_classes=3, inference="slide", window_size=32).eval()
    slide.load_state_dict(whole.state_dict())
    torch.testing.assert_close(slide.infer(x), whole.infer(x))  # one window: the whole image
    windows = []
    slide.hparams.window_size, slide.hparams.window_stride = 16, 8
    slide.forward = lambda images: (
        windows.append(images.shape[-2:]) or torch.zeros(1, 3, *images.shape[-2:])
    )
    slide.infer(x)
    assert windows == [(16, 16)] * 9
    with pytest.raises(ValueError, match="needs a window: set window_size"):
        tiny(num_classes=3, inference="slide").infer(x)


def test_sync_batchnorm_on_several_gpu_processes_only():
    def with_trainer(device):
        model = tiny(num_classes=3)
        strategy = types.SimpleNamespace(root_device=torch.device(device))
        model._trainer = types.SimpleNamespace(world_size=2, strategy=strategy)
        return model

    model = with_trainer("cuda")
    model._configure_network(None)
    assert isinstance(model.network.decode_head.fpn_bottleneck.batch_norm, torch.nn.SyncBatchNorm)
    model = with_trainer("cpu")
    with pytest.warns(UserWarning, match="SyncBatchNorm runs on GPUs only"):
        model._configure_network(None)
    assert type(model.network.decode_head.fpn_bottleneck.batch_norm) is torch.nn.BatchNorm2d


def test_pretrained_upernet_folder_gives_the_whole_network():
    folder = FIXTURES / "hf_upernet_nat_tiny_random"
    reference = NatForSemanticSegmentation.from_pretrained(folder).eval()
    model = NatSegmenter(pretrained=str(folder)).eval()
    assert model.hparams.lr == 6e-5 and model.hparams.hidden_size == reference.config.hidden_size
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x).logits)
    with pytest.raises(ValueError, match="its own heads: hidden_size=7"):
        NatSegmenter(pretrained=str(folder), hidden_size=7)


def test_classification_checkpoints_give_the_backbone(tmp_path):
    folder = FIXTURES / "hf_nat_tiny_random"
    reference = NatForImageClassification.from_pretrained(folder)
    model = NatSegmenter(pretrained=str(folder), num_classes=3, **HEADS)
    rpb = model.backbone.levels[0].blocks[0].attn.rpb
    assert torch.equal(rpb, reference.nat.levels[0].blocks[0].attn.rpb)
    classifier = NatClassifier(pretrained=str(folder), num_classes=10)
    # what a fit's checkpoint holds of it
    torch.save(
        {"hyper_parameters": dict(classifier.hparams), "state_dict": classifier.state_dict()},
        tmp_path / "cls.ckpt",
    )
    from_ckpt = NatSegmenter(pretrained=str(tmp_path / "cls.ckpt"), num_classes=3, **HEADS)
    torch.testing.assert_close(from_ckpt.backbone.state_dict()["levels.0.blocks.0.attn.rpb"], rpb)


def test_dilations_replace_the_pretrained_classifiers_and_keep_its_weights():
    """DiNAT's segmentation recipes run larger dilations than the classifiers they start from."""
    folder = FIXTURES / "hf_dinat_tiny_random"  # dilations [[1], [1, 2], [1, 2], [1]]
    wider = [[2], [1, 3], [1, 2], [1]]
    model = NatSegmenter(pretrained=str(folder), num_classes=3, dilations=wider, **HEADS)
    assert model.network.config.backbone.dilations == wider
    reference = NatForImageClassification.from_pretrained(folder).nat.state_dict()
    shared = [n for n in model.backbone.state_dict() if n in reference]
    assert len(shared) > 20 and all(
        torch.equal(model.backbone.state_dict()[n], reference[n]) for n in shared
    )
    assert model.backbone.levels[0].blocks[0].attn.dilation == 2
    with pytest.raises(ValueError, match="dilations"):  # a config that differs, not asked for
        NatSegmenter(
            pretrained=str(folder),
            num_classes=3,
            model={
                **NatForImageClassification.from_pretrained(folder).config.to_fields(),
                "dilations": wider,
            },
            **HEADS,
        )


def test_a_segmenter_checkpoint_gives_the_whole_network_with_new_classes(tmp_path):
    model = tiny(num_classes=3)
    trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(
        model, DataLoader(halves(4), batch_size=4)
    )
    model.trainer.save_checkpoint(tmp_path / "seg.ckpt")
    same = NatSegmenter(pretrained=str(tmp_path / "seg.ckpt"))
    assert torch.equal(
        same.network.decode_head.classifier.weight, model.network.decode_head.classifier.weight
    )
    other = NatSegmenter(pretrained=str(tmp_path / "seg.ckpt"), id2label={0: "a", 1: "b"})
    assert other.network.decode_head.classifier.weight.shape[0] == 2
    assert torch.equal(
        other.network.decode_head.fpn_bottleneck.conv.weight,
        model.network.decode_head.fpn_bottleneck.conv.weight,
    )
    with pytest.raises(ValueError, match="head has 3 classes but this model has num_classes=2"):
        NatSegmenter.load_from_checkpoint(
            tmp_path / "seg.ckpt", num_classes=2, id2label=None, weights_only=True
        )


def test_linear_probe_and_ema_are_the_shared_callbacks():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from nat_lightning.callbacks.finetuning import BackboneFreeze

    callbacks = tiny(num_classes=3, finetune="linear_probe", ema_decay=0.9).configure_callbacks()
    (freeze,) = [c for c in callbacks if isinstance(c, BackboneFreeze)]
    assert freeze.unfreeze_at_epoch is None  # never thawed
    assert any(isinstance(c, EMAWeightAveraging) for c in callbacks)
    assert not any(
        isinstance(c, (BackboneFreeze, EMAWeightAveraging))
        for c in tiny(num_classes=3).configure_callbacks()
    )


@pytest.mark.slow
def test_two_processes_validate_as_one(tmp_path):
    """DDP (gloo) splits the validation images between the ranks; the metrics' counts are
    gathered, so the split's mIoU, per-class IoU, pixel accuracy and loss equal one process's."""
    import signal

    torch.manual_seed(0)
    model = tiny()
    data = shapes_datamodule(batch_size=7)  # 80 images: uneven batches on each rank

    def validate(devices, **kwargs):
        t = trainer(tmp_path, devices=devices, limit_val_batches=None, **kwargs)
        return t.validate(model, datamodule=data, verbose=False)[0]

    one = validate(1)
    signal.alarm(240)
    try:
        two = validate(2, strategy="ddp_spawn")
    finally:
        signal.alarm(0)
    assert set(one) == set(two) and "val/iou/square" in one
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key


def test_training_flops_are_counted_once_for_the_throughput_monitor():
    model = tiny(num_classes=3)
    model.on_train_batch_start({"pixel_values": torch.zeros(0, 3, 32, 32)}, 0)  # nothing decoded
    assert model.flops_per_batch is None
    model.on_train_batch_start({"pixel_values": torch.zeros(2, 3, 32, 32)}, 0)
    small = model.flops_per_batch
    model.on_train_batch_start({"pixel_values": torch.zeros(2, 3, 64, 64)}, 1)
    assert model.flops_per_batch == small  # measured on the first batch only
    model.flops_per_batch = None
    model.on_train_batch_start({"pixel_values": torch.zeros(4, 3, 32, 32)}, 2)
    assert model.flops_per_batch == 2 * small  # linear in the batch
