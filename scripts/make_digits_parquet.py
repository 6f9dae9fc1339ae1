"""Build the embedded default dataset: scikit-learn's 8x8 handwritten digits as an HF parquet.

    pip install scikit-learn && python scripts/make_digits_parquet.py

1,797 grayscale images (UCI ML hand-written digits, CC BY 4.0), pixel values 0..16 scaled to
0..255, stored as PNG bytes in a `datasets` Image column with a ClassLabel `label` ("0".."9"),
so it is read by exactly the code path of any Hugging Face image dataset. Deterministic.
"""

import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "src" / "nat_lightning" / "data" / "assets" / "digits.parquet"


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    ds = Dataset.from_dict(
        {"image": [{"bytes": png_bytes(im), "path": None} for im in images], "label": digits.target.tolist()},
        features=features,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(ds)} images)")


if __name__ == "__main__":
    main()
