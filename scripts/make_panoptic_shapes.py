"""Write the embedded panoptic dataset: shapes (things) over sky and ground (stuff), COCO-panoptic
style.

    python scripts/make_panoptic_shapes.py   # -> src/nat_lightning/data/assets/panoptic_shapes/{train,validation}.parquet

Each 64 x 64 image is split by a wavy horizon into sky (light, bluish, smooth) and ground (dark
brown, grainy): two stuff segments. Over them lie two to five things: circles (red), squares
(green) and triangles (magenta), each instance with its own jittered colour and a dark 1-px rim,
placed so that some touch or overlap (the later one occludes) but every instance keeps at least
half of its area. Classes: 0 circle, 1 square, 2 triangle (things), 3 sky, 4 ground (stuff).

Columns: ``image`` (JPEG, quality 90, no chroma subsampling), ``panoptic`` (an RGB PNG of segment
ids, id = R + 256 G + 256^2 B, 0 void; a thing's id is 1000 (class + 1) + its instance number,
a stuff's 1000 (class + 1)) and ``segments_info`` (a list of {id, category_id, iscrowd}, sorted
by id; category_id a ClassLabel whose names are the classes). Seeded: the same numbers on every
run; the bytes are reproducible for a given Pillow/libjpeg/zlib/pyarrow version.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageDraw

OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "nat_lightning"
    / "data"
    / "assets"
    / "panoptic_shapes"
)
CLASSES = ("circle", "square", "triangle", "sky", "ground")
THINGS = (0, 1, 2)
SKY, GROUND = 3, 4
HUES = {0: 0.0, 1: 1 / 3, 2: 5 / 6}  # thing class -> hue (0..1): red, green, magenta
SIDE = 64
SPLITS = {"train": (320, 0), "validation": (64, 1)}  # split -> (images, seed)
PLACEMENT_TRIES = 20  # positions tried for a thing before it is left out
MIN_AREA = 30  # pixels every thing keeps visible
MIN_KEPT = 0.5  # share of its own area every thing keeps once later things cover it


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


def stuff(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image (SIDE, SIDE, 3) float RGB, sky (SIDE, SIDE) bool): sky above a wavy horizon."""
    y, x = np.mgrid[:SIDE, :SIDE]
    level, amplitude = rng.uniform(20, 44), rng.uniform(2, 6)
    period, phase = rng.uniform(16, 48), rng.uniform(0, 2 * np.pi)
    sky = y < level + amplitude * np.sin(2 * np.pi * x / period + phase)
    blue = hsv_to_rgb(rng.uniform(0.55, 0.62), rng.uniform(0.2, 0.4), rng.uniform(0.8, 0.95))
    brown = hsv_to_rgb(rng.uniform(0.06, 0.1), rng.uniform(0.4, 0.6), rng.uniform(0.35, 0.5))
    sky_image = blue + 15 * smooth_noise(rng, 2)[..., None]
    ground_image = brown + 25 * smooth_noise(rng, 16)[..., None]
    return np.where(sky[..., None], sky_image, ground_image), sky


def thing_region(rng: np.random.Generator, cls: int, centre: np.ndarray, radius: float):
    """(SIDE, SIDE) bool: a thing of class ``cls``."""
    canvas = PILImage.new("L", (SIDE, SIDE), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre
    if cls == 0:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    else:
        corners = 4 if cls == 1 else 3
        draw.regular_polygon((cx, cy, radius), corners, rotation=rng.uniform(0, 360), fill=255)
    return np.asarray(canvas) > 0


def centre_for(rng: np.random.Generator, radius: float, placed: list) -> np.ndarray:
    """Anywhere, or (half the time, once a thing is placed) touching a placed thing."""
    if placed and rng.uniform() < 0.5:
        other_centre, other_radius = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0, 2 * np.pi)
        distance = (radius + other_radius) * rng.uniform(0.7, 1.0)
        centre = other_centre + distance * np.array([np.cos(angle), np.sin(angle)])
        return np.clip(centre, radius * 0.5, SIDE - radius * 0.5)
    return rng.uniform(radius * 0.6, SIDE - radius * 0.6, size=2)


def place(rng: np.random.Generator, ids: np.ndarray, cls: int, placed: list) -> np.ndarray | None:
    """The visible region of a new thing, or None when no try keeps every thing visible enough
    (MIN_AREA, MIN_KEPT); ``ids`` holds the things so far (0: none), ``placed`` their circles."""
    radius = rng.uniform(6, 13)
    for _ in range(PLACEMENT_TRIES):
        centre = centre_for(rng, radius, placed)
        region = thing_region(rng, cls, centre, radius)
        if region.sum() < MIN_AREA:
            continue
        covered = ids[region]
        earlier, before = np.unique(ids[ids > 0], return_counts=True)
        after = before - np.array([(covered == i).sum() for i in earlier], dtype=int)
        if (after >= np.maximum(MIN_AREA, MIN_KEPT * before)).all():
            placed.append((centre, radius))
            return region
    return None


def rim(region: np.ndarray) -> np.ndarray:
    """The pixels of ``region`` with a 4-neighbour outside it."""
    padded = np.pad(region, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inner


def example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One (image (SIDE, SIDE, 3) uint8, segment ids (SIDE, SIDE) int64, segments_info)."""
    image, sky = stuff(rng)
    ids = np.zeros((SIDE, SIDE), dtype=np.int64)  # things only, for now
    classes, counts, placed = {}, dict.fromkeys(THINGS, 0), []
    for cls in rng.choice(THINGS, size=int(rng.integers(2, 6))):
        cls = int(cls)
        region = place(rng, ids, cls, placed)
        if region is None:
            continue
        counts[cls] += 1
        segment = 1000 * (cls + 1) + counts[cls]
        ids[region], classes[segment] = segment, cls
        hue = (HUES[cls] + rng.uniform(-0.03, 0.03)) % 1.0
        colour = hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
        image[region] = colour + 12 * smooth_noise(rng, 8)[region][:, None]
    for segment in classes:  # the rims of what stays visible
        image[rim(ids == segment)] *= 0.45
    for cls, where in ((SKY, sky), (GROUND, ~sky)):
        shown = where & (ids == 0)
        if shown.any():  # things may hide it all
            ids[shown], classes[1000 * (cls + 1)] = 1000 * (cls + 1), cls
    image += rng.normal(0, 6, image.shape)
    info = [{"id": s, "category_id": classes[s], "iscrowd": 0} for s in sorted(np.unique(ids))]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), ids, info


def id_png(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids as COCO-panoptic's (H, W, 3) uint8 RGB: id = R + 256 G + 256^2 B."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        PILImage.fromarray(array).save(buffer, format="JPEG", quality=90, subsampling=0)
    else:  # fixed settings keep the bytes reproducible
        PILImage.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def features() -> Features:
    segment = {
        "id": Value("int64"),
        "category_id": ClassLabel(names=CLASSES),
        "iscrowd": Value("int8"),
    }
    return Features({"image": Image(), "panoptic": Image(), "segments_info": List(segment)})


def panoptic_split(size: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = {"image": [], "panoptic": [], "segments_info": []}
    for _ in range(size):
        image, ids, info = example(rng)
        rows["image"].append({"bytes": encoded(image, "JPEG"), "path": None})
        rows["panoptic"].append({"bytes": encoded(id_png(ids), "PNG"), "path": None})
        rows["segments_info"].append(info)
    return Dataset.from_dict(rows, features=features())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder to write")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    for split, (size, seed) in SPLITS.items():
        path = args.output / f"{split}.parquet"
        panoptic_split(size, seed).to_parquet(str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"wrote {size} images to {path} ({path.stat().st_size} bytes, sha256 {digest})")


if __name__ == "__main__":
    main()
