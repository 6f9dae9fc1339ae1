"""Decode any image an HF dataset can hold into an 8-bit RGB array, or None when it is broken."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: L, LA, P (with transparency), RGBA, CMYK, 1, I;16, I, F."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit and float: scale the full range of the type to 0..255, don't clip
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = max(1.0, float(array.max()))
        else:  # Pillow opens 16-bit PNGs as "I;16" or "I"
            top = max(65535.0, float(array.max()))
        gray = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # composite on white
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode(value) -> np.ndarray | None:
    """(H, W, 3) uint8 from an undecoded HF Image value (bytes/path) or a PIL image; None if broken."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(value["path"])
        elif isinstance(value, (str, bytes)):
            image = Image.open(value if isinstance(value, str) else io.BytesIO(value))
        else:
            return None
        image.load()  # decode now, so truncated files fail here and not later
        return np.asarray(to_rgb(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        log.debug("skipping an undecodable image: %s", err)
        return None
