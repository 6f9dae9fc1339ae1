"""The embedded digits: the committed parquet is exactly what scripts/make_digits_parquet.py writes,
and quickstart_datamodule reads it with the quickstart settings."""

import runpy
from pathlib import Path

from nat_lightning.data import DIGITS_PARQUET, quickstart_datamodule

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_digits_parquet.py"


def test_the_asset_is_reproduced_byte_for_byte(tmp_path):
    script = runpy.run_path(str(SCRIPT), run_name="make_digits_parquet")
    script["digits_dataset"]().to_parquet(str(tmp_path / "digits.parquet"))
    assert (tmp_path / "digits.parquet").read_bytes() == Path(DIGITS_PARQUET).read_bytes()
    assert Path(DIGITS_PARQUET).stat().st_size < 300_000  # small enough to ship in the wheel


def test_quickstart_datamodule():
    dm = quickstart_datamodule(batch_size=16)
    assert dm.hparams.dataset is None and dm.hparams.image_size == 32 and dm.hparams.hflip == 0.0
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (16, 3, 32, 32) and dm.num_classes == 10
