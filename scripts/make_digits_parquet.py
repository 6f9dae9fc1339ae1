"""Write the embedded default dataset: scikit-learn's 8x8 digits as a Hugging Face parquet.

    python scripts/make_digits_parquet.py      # -> src/nat_lightning/data/assets/digits.parquet

1,797 grayscale 8x8 images (values 0..16 scaled to 0..255) stored as PNG bytes in a ``datasets``
Image column, plus a ClassLabel ``label`` with names "0".."9". ``Dataset.to_parquet`` embeds the
features in the parquet schema, so ``load_dataset("parquet", ...)`` reads them back unchanged.
The output is byte-for-byte reproducible for a given pyarrow/Pillow/zlib version.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits

OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "nat_lightning"
    / "data"
    / "assets"
    / "digits.parquet"
)


def png_bytes(image: np.ndarray) -> bytes:
    """One 8x8 image on the 0..16 scale as 8-bit grayscale PNG bytes (0..16 -> 0..255, rounded)."""
    pixels = np.rint(image.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)
    buffer = io.BytesIO()
    # uint8 (8, 8) is mode L; fixed compression settings keep the bytes reproducible
    PILImage.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def digits_dataset() -> Dataset:
    digits = load_digits()  # shipped with scikit-learn: no download
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes(img), "path": None} for img in digits.images],
            "label": [int(t) for t in digits.target],
        },
        features=features,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="parquet file to write")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    dataset = digits_dataset()
    dataset.to_parquet(str(args.output))
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()[:16]
    print(
        f"wrote {len(dataset)} images to {args.output} "
        f"({args.output.stat().st_size} bytes, sha256 {digest})"
    )


if __name__ == "__main__":
    main()
