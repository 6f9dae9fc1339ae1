"""Write ``predict`` label maps as palette PNGs (optionally colour overlays) and an index CSV.

Each rank writes the PNGs of its own batches as they come (no mask is held until the end), and
remembers one index row per input: its id, its mask file and an error for an input that could
not be decoded. At the epoch's end every rank hands its rows, each with its input position, to
every other in one ``all_gather_object`` (the only collective; every rank calls it once per
predict epoch, from ``on_predict_epoch_end``), and rank 0 writes ``index.csv`` in input order,
as PredictionWriter orders its rows.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from ..files import write_atomically
from ..runs import shown
from .prediction_writer import MAX_NAMED, merged


def palette(n: int = 256) -> list[int]:
    """PASCAL VOC's colour map as a flat [r, g, b, ...] list: class 0 black, then distinct
    colours from the bits of the class id."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    return colours


class MaskWriter(BasePredictionWriter):
    """``<stem>.png`` per decoded input: a palette PNG whose pixel values are the class ids (a
    16-bit grey PNG above 256 classes), and with ``overlay`` ``<stem>_overlay.png``, the image
    blended with the class colours. ``index.csv`` lists every input in input order: ``id``,
    ``file`` (the mask, relative to ``output_dir``; empty for an undecodable input), ``overlay``
    (with ``overlay``) and ``error``. ``<stem>`` is a path id's file stem, else the id itself;
    ids with the same stem are numbered (``cat_1.png``) on one rank, and a warning names stems
    that several ranks wrote.

    Each ``predict_step`` output holds ``ids``, ``errors`` (None or a reason per id) and
    ``masks`` ((h, w) class ids for each id whose error is None, in order). Overlays need the
    normalised images of the batch and its ``content`` and ``sizes``, and the ``mean``/``std``
    that normalised them (the datamodule's, else the LightningModule's ``preprocessing``).
    Files are written atomically, mode 0644.
    """

    def __init__(self, output_dir: str = "masks", overlay: bool = False, alpha: float = 0.5):
        """Args:
        output_dir: folder of the PNGs and index.csv, relative to the trainer's
            default_root_dir unless absolute.
        overlay: also write the image blended with the class colours.
        alpha: weight of the class colours in the overlay.
        """
        super().__init__(write_interval="batch")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha=}")
        self.output_dir, self.overlay, self.alpha = output_dir, overlay, alpha
        self._rows: list[tuple[int | None, dict]] = []
        self._stems: dict[str, int] = {}

    def _folder(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.output_dir

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._rows, self._stems = [], {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        ids, masks = prediction["ids"], prediction["masks"]
        errors = prediction.get("errors") or [None] * len(ids)
        decoded = [i for i, error in enumerate(errors) if error is None]
        if len(errors) != len(ids) or len(decoded) != len(masks):
            raise ValueError(
                f"a predict_step output has {len(ids)} ids, {len(errors)} errors and "
                f"{len(masks)} masks; expected as many errors as ids and one mask per id whose "
                "error is None"
            )
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        images = original_images(trainer, pl_module, batch) if self.overlay else None
        known = batch_indices if batch_indices and len(batch_indices) == len(ids) else None
        files = {}
        for k, i in enumerate(decoded):
            stem = unique_stem(self._stems, ids[i])
            files[i] = f"{stem}.png"
            write_png(folder / files[i], mask_image(masks[k]))
            if images is not None:
                blend = overlay_image(images[k], masks[k], self.alpha)
                write_png(folder / f"{stem}_overlay.png", blend)
        for i, (id_, error) in enumerate(zip(ids, errors)):
            position = known[i] if known is not None else id_
            row = {"id": str(id_), "file": files.get(i, ""), "error": error}
            if self.overlay:
                row["overlay"] = files[i].replace(".png", "_overlay.png") if i in files else ""
            self._rows.append((position if isinstance(position, int) else None, row))

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        """Gather every rank's index rows; rank 0 writes index.csv (the masks are written)."""
        rows = self._rows
        if trainer.world_size > 1:
            parts: list = [None] * trainer.world_size
            dist.all_gather_object(parts, rows)  # the collective: every rank, once per epoch
            if trainer.global_rank != 0:
                return
            warn_shared([{row["file"] for _, row in part} for part in parts])
            rows = [item for part in parts for item in part]
        rows = merged([rows])
        path = self._folder(trainer) / "index.csv"
        write_index(path, rows, self.overlay)
        failed = [row["id"] for row in rows if row["error"] is not None]
        folder, index = shown(path.parent, path)
        kinds = "mask and overlay PNGs" if self.overlay else "mask PNGs"
        rank_zero_info(
            f"predict: wrote {len(rows) - len(failed)} {kinds} to {folder} and their index to "
            f"{index}" + (f" ({len(failed)} undecodable: no mask)" if failed else "")
        )
        if failed:
            warnings.warn(
                f"{len(failed)} of {len(rows)} input image(s) could not be decoded and have no "
                f"mask (see the error column of {path}): {failed[:MAX_NAMED]}",
                stacklevel=1,
            )


def mask_image(mask: torch.Tensor) -> Image.Image:
    """A (h, w) class-id map as a palette PNG image (16-bit grey above 255)."""
    values = mask.cpu().numpy()
    if values.max(initial=0) > 255:
        return Image.fromarray(values.astype(np.uint16))
    values = np.ascontiguousarray(values, dtype=np.uint8)
    image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    image.putpalette(palette())
    return image


def overlay_image(image: np.ndarray, mask: torch.Tensor, alpha: float) -> Image.Image:
    """``image`` (h, w, 3) uint8 blended with the palette colour of each pixel's class."""
    colours = np.asarray(palette(), dtype=np.float32).reshape(256, 3)
    ids = mask.cpu().numpy().astype(np.int64) % 256
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours[ids]
    return Image.fromarray(blend.round().astype(np.uint8))  # (h, w, 3) uint8: RGB


def write_png(path: Path, image: Image.Image) -> None:
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def write_index(
    path: Path, rows: list[dict], overlay: bool, columns: list[str] | None = None
) -> None:
    """``index.csv``: ``columns`` (MaskWriter's by default) of ``rows``, errors as ''."""
    columns = columns or (
        ["id", "file", "overlay", "error"] if overlay else ["id", "file", "error"]
    )

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows({**row, "error": row["error"] or ""} for row in rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)


def unique_stem(stems: dict[str, int], id_) -> str:
    """A path id's file stem, else the id itself; numbered (``cat_1``) after its first use in
    ``stems`` (the counts so far, updated)."""
    stem = Path(str(id_)).stem or str(id_)
    seen = stems.get(stem, 0)
    stems[stem] = seen + 1
    return stem if seen == 0 else f"{stem}_{seen}"


def warn_shared(files_per_rank: list[set[str]]) -> None:
    """Warn of the files that several ranks wrote (inputs whose stems collided across ranks)."""
    files = Counter(f for part in files_per_rank for f in part if f)
    shared = [f for f, ranks in files.items() if ranks > 1]
    if shared:
        warnings.warn(
            f"several ranks wrote {sorted(shared)[:MAX_NAMED]}: inputs with the same file stem "
            "overwrote each other",
            stacklevel=1,
        )


def original_images(trainer, pl_module, batch) -> list[np.ndarray]:
    """Each decoded image as (h, w, 3) uint8 at its original size."""
    stats = getattr(trainer.datamodule, "preprocessing", None) or pl_module.preprocessing or {}
    if stats.get("mean") is None or stats.get("std") is None:
        raise ValueError(
            "overlay=True needs the mean and std that normalised the images: neither the "
            "datamodule nor the model's preprocessing gives them"
        )
    images = batch["pixel_values"].float().cpu()
    mean = torch.tensor(stats["mean"]).view(3, 1, 1)
    std = torch.tensor(stats["std"]).view(3, 1, 1)
    full = torch.tensor([images.shape[-2:]] * len(images))
    content, sizes = batch.get("content", full), batch.get("sizes", full)
    out = []
    for image, (ch, cw), (h, w) in zip(images, content.tolist(), sizes.tolist()):
        image = (image[:, :ch, :cw] * std + mean).clamp(0, 1)[None]
        image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
        out.append((image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    return out
