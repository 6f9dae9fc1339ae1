"""transformers' ``preprocessor_config.json`` for our evaluation transforms: what an exported
folder carries so that transformers' image processors feed the network as our data modules do.
"""

from __future__ import annotations

from .batch import IMAGENET_MEAN, IMAGENET_STD


def data_settings(checkpoint: dict) -> tuple[int, float, list[float], list[float]]:
    """``image_size``, ``crop_pct``, ``mean`` and ``std`` of the checkpoint's data module; older
    checkpoints may lack them or hold None: 224, 0.875 and ImageNet's statistics then."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    size = int(data.get("image_size") or 224)
    crop_pct = float(data.get("crop_pct") or 0.875)
    return (
        size,
        crop_pct,
        list(data.get("mean") or IMAGENET_MEAN),
        list(data.get("std") or IMAGENET_STD),
    )


def preprocessor_config(checkpoint: dict) -> dict:
    """transformers' preprocessor_config.json for our evaluation transform (data/transforms.py
    ``eval_transform``): shorter side to ``int(image_size / crop_pct)``, bicubic, centre crop
    ``image_size``, normalise.

    CLIPImageProcessor does exactly that with ``size={"shortest_edge": int(image_size /
    crop_pct)}`` and ``crop_size=image_size``, at every size and in transformers 4.x and 5.x alike,
    and read_preprocessor_config reads crop_size / shortest_edge back as the crop_pct. Not
    ViTImageProcessor: it ignores ``crop_pct`` and squashes the image to a square; nor
    ConvNextImageProcessor: it squashes from 384 px on. One difference remains: albumentations
    rounds the longer side, transformers floors it, so that side can be a pixel shorter there and
    the crop a pixel off.
    """
    size, crop_pct, mean, std = data_settings(checkpoint)
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": int(size / crop_pct + 1e-9)},  # eval_transform's rounding
        "resample": 3,  # PIL.Image.BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
    }


def segmentation_preprocessor_config(model, checkpoint: dict) -> dict:
    """transformers' preprocessor_config.json for HFSegmentationDataModule's evaluation
    transform: shorter side to ``eval_size`` (bilinear, aspect kept), normalise. CLIPImageProcessor
    without its centre crop does that; our padding to a multiple of 32 changes no prediction
    inside the image, so it has no counterpart there."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    recorded = model.preprocessing or {}
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": int(data.get("eval_size") or data.get("crop_size") or 512)},
        "resample": 2,  # PIL.Image.BILINEAR, as the evaluation resize
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(recorded.get("mean") or data.get("mean") or IMAGENET_MEAN),
        "image_std": list(recorded.get("std") or data.get("std") or IMAGENET_STD),
    }


def universal_preprocessor_config(model, checkpoint: dict) -> dict:
    """transformers' preprocessor_config.json of a Mask2Former/OneFormer folder
    (``Mask2FormerImageProcessor``/``OneFormerImageProcessor``) for HFPanopticDataModule's
    evaluation transform: shorter side to ``eval_size``, padded to a multiple of 32, normalised;
    255 unlabelled."""
    config = segmentation_preprocessor_config(model, checkpoint)
    kind = "OneFormer" if model.network.architecture == "oneformer" else "Mask2Former"
    return {
        "image_processor_type": f"{kind}ImageProcessor",
        "do_resize": True,
        "size": config["size"],
        "size_divisor": 32,
        "resample": config["resample"],
        "do_rescale": True,
        "rescale_factor": config["rescale_factor"],
        "do_normalize": True,
        "image_mean": config["image_mean"],
        "image_std": config["image_std"],
        "ignore_index": 255,
        "do_reduce_labels": False,
        "num_labels": model.num_classes,
    }
