"""Write the embedded segmentation dataset: shapes on textured backgrounds, with their masks.

    python scripts/make_shapes_parquet.py   # -> src/nat_lightning/data/assets/shapes/{train,validation}.parquet

Each 64 x 64 image holds one to three shapes: circles, squares, triangles and rings (annuli),
each of random size, position and (squares, triangles) rotation, later ones occluding earlier
ones. Classes: 0 background, 1 circle, 2 square, 3 triangle, 4 ring. Every class has its own hue
family (circles red, squares green, triangles blue, rings yellow), jittered per shape, on a
texture of its own; backgrounds are desaturated low-frequency noise, sometimes striped. All
pixels carry fine noise. Images are JPEG (quality 90, no chroma subsampling, so colour edges stay
sharp), masks "L" PNGs of class ids, and ``classes`` lists the ids present as a ClassLabel
sequence whose names are the class names. Seeded: the same numbers on every run; the bytes are
reproducible for a given Pillow/libjpeg/zlib/pyarrow version.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, List
from PIL import Image as PILImage
from PIL import ImageDraw

OUTPUT = (
    Path(__file__).resolve().parents[1] / "src" / "nat_lightning" / "data" / "assets" / "shapes"
)
CLASSES = ("background", "circle", "square", "triangle", "ring")
HUES = {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1 / 6}  # class -> hue (0..1): red, green, blue, yellow
SIDE = 64
SPLITS = {"train": (320, 0), "validation": (80, 1)}  # split -> (images, seed)


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (each 0..1) as RGB on 0..255."""
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255


def smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """(SIDE, SIDE) noise in -1..1 that varies over ``cells`` cells per side (bilinear)."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    small = PILImage.fromarray(grid, mode="F")
    return np.asarray(small.resize((SIDE, SIDE), PILImage.BILINEAR), dtype=np.float64)


def background(rng: np.random.Generator) -> np.ndarray:
    """(SIDE, SIDE, 3) float RGB: a desaturated colour under low-frequency noise, some stripes."""
    base = hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.8))
    texture = 45 * smooth_noise(rng, int(rng.integers(2, 8)))
    if rng.uniform() < 0.4:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
        y, x = np.mgrid[:SIDE, :SIDE]
        texture += 25 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    return base + texture[..., None]


def shape_fill(rng: np.random.Generator, cls: int) -> np.ndarray:
    """(SIDE, SIDE, 3) float RGB: the class's hue, jittered, with a texture of its own."""
    hue = (HUES[cls] + rng.uniform(-0.04, 0.04)) % 1.0
    colour = hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    return colour + 30 * smooth_noise(rng, int(rng.integers(4, 16)))[..., None]


def draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cls: int) -> None:
    """One shape of class ``cls`` drawn with value 255 on a mode-L canvas."""
    radius = rng.uniform(8, 18)
    cx, cy = rng.uniform(radius * 0.6, SIDE - radius * 0.6, size=2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if cls == 1:
        draw.ellipse(box, fill=255)
    elif cls == 4:
        draw.ellipse(box, fill=255)
        inner = radius * rng.uniform(0.4, 0.6)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        corners = 4 if cls == 2 else 3
        draw.regular_polygon((cx, cy, radius), corners, rotation=rng.uniform(0, 360), fill=255)


def example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image (SIDE, SIDE, 3) uint8, mask (SIDE, SIDE) uint8 of class ids)."""
    image = background(rng)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    for cls in rng.integers(1, len(CLASSES), size=int(rng.integers(1, 4))):
        canvas = PILImage.new("L", (SIDE, SIDE), 0)
        draw_shape(ImageDraw.Draw(canvas), rng, int(cls))
        region = np.asarray(canvas) > 0  # a ring's hole is not in it: what lies beneath shows
        image[region] = shape_fill(rng, int(cls))[region]
        mask[region] = cls
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        PILImage.fromarray(array).save(buffer, format="JPEG", quality=90, subsampling=0)
    else:  # uint8 (H, W) is mode L; fixed settings keep the bytes reproducible
        PILImage.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def shapes_split(size: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = {"image": [], "annotation": [], "classes": []}
    for _ in range(size):
        image, mask = example(rng)
        rows["image"].append({"bytes": encoded(image, "JPEG"), "path": None})
        rows["annotation"].append({"bytes": encoded(mask, "PNG"), "path": None})
        rows["classes"].append(sorted(int(c) for c in np.unique(mask)))
    features = Features(
        {"image": Image(), "annotation": Image(), "classes": List(ClassLabel(names=CLASSES))}
    )
    return Dataset.from_dict(rows, features=features)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder to write")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    for split, (size, seed) in SPLITS.items():
        path = args.output / f"{split}.parquet"
        shapes_split(size, seed).to_parquet(str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"wrote {size} pairs to {path} ({path.stat().st_size} bytes, sha256 {digest})")


if __name__ == "__main__":
    main()
