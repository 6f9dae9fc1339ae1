"""Write ``predict`` results of a universal-segmentation task (Mask2Former, OneFormer) as PNGs,
COCO-format JSON and an index CSV.

Each rank writes the PNGs of its own batches as they come (no map is held until the end), and
remembers one index row per input (its id, its PNG, its number of segments, an error for an
input that could not be decoded) and the JSON entries of its decoded inputs. At the epoch's end
every rank hands its rows and entries, each with its input position, to every other in one
``all_gather_object`` (the only collective; every rank calls it once per predict epoch, from
``on_predict_epoch_end``), and rank 0 writes ``index.csv`` and ``predictions.json`` in input
order, as MaskWriter and PredictionWriter order their rows.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from ..files import write_atomically
from ..runs import shown
from .mask_writer import (
    mask_image,
    original_images,
    overlay_image,
    palette,
    unique_stem,
    warn_shared,
    write_index,
    write_png,
)
from .prediction_writer import MAX_NAMED, merged

MODES = ("panoptic", "instance", "semantic")


class PanopticWriter(BasePredictionWriter):
    """``<stem>.png`` per decoded input, by the batch's ``mode``:

    - ``panoptic``: an RGB PNG of segment ids in COCO panoptic's encoding (id = R + 256 G +
      256² B; 0 where no segment); ``predictions.json`` is COCO's panoptic results format,
      ``{"annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id",
      "score", "isthing", "was_fused"}]}], "categories": [{"id", "name", "isthing"}]}``. A
      fused class's queries share one segment id: it is listed once, with its first score.
    - ``instance``: the same RGB encoding of the painted instance map, value k + 1 for the
      k-th instance (0: none), to look at; ``predictions.json`` is COCO's results list,
      ``[{"image_id", "category_id", "score", "segmentation": {"size": [h, w], "counts"}}]``,
      one per instance (its own mask, overlaps kept) as a compressed RLE string.
    - ``semantic``: a palette PNG of class ids, as MaskWriter's; no ``predictions.json``.

    ``image_id`` is the input's id as a string, as in ``index.csv``. ``isthing`` comes from the
    LightningModule's ``thing_ids`` where it has them, else every class is a thing; category
    names from its ``id2label``. With ``overlay``, ``<stem>_overlay.png`` is the image blended
    with a colour per segment (``palette()`` of the PNG's segment value, so neighbouring
    instances of one class differ; pixels of no segment keep the image), per class for
    ``semantic`` (MaskWriter's overlay).

    ``index.csv`` lists every input in input order: ``id``, ``file`` (relative to
    ``output_dir``; empty for an undecodable input), ``overlay`` (with ``overlay``),
    ``segments`` (the segments of the image; for ``semantic`` the classes present) and
    ``error``. ``<stem>`` is a path id's file stem, else the id itself; ids with the same stem
    are numbered (``cat_1.png``) on one rank, and a warning names stems several ranks wrote.

    Each ``predict_step`` output holds ``ids``, ``errors`` (None or a reason per id), ``mode``
    and ``segments``: for each id whose error is None, in order, a dict of ``segmentation``
    ((h, w) int map at the image's original size: panoptic segment ids from 1, 0 none, -1 all
    none; instance ids of ``segments_info``; semantic class ids), ``segments_info`` (dicts of
    ``id``, ``label_id``, ``was_fused``, ``score``) and, for ``instance``, ``masks`` ((N, h, w)
    bool, one per ``segments_info`` entry). Overlays need the batch's normalised images and its
    ``content`` and ``sizes``, and the ``mean``/``std`` that normalised them (the datamodule's,
    else the LightningModule's ``preprocessing``). Files are written atomically, mode 0644.
    """

    def __init__(self, output_dir: str = "panoptic", overlay: bool = False, alpha: float = 0.5):
        """Args:
        output_dir: folder of the PNGs, predictions.json and index.csv, relative to the
            trainer's default_root_dir unless absolute.
        overlay: also write the image blended with a colour per segment.
        alpha: weight of the segment colours in the overlay.
        """
        super().__init__(write_interval="batch")
        if not isinstance(output_dir, str) or not output_dir:
            raise ValueError(f"output_dir must be a non-empty folder path, got {output_dir=}")
        if not isinstance(overlay, bool):
            raise ValueError(f"overlay must be True or False, got {overlay=}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha=}")
        self.output_dir, self.overlay, self.alpha = output_dir, overlay, float(alpha)
        self._rows: list[tuple[int | None, dict]] = []
        self._entries: list[tuple[int | None, dict | list]] = []
        self._stems: dict[str, int] = {}
        self._mode: str | None = None

    def _folder(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.output_dir

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._rows, self._entries, self._stems, self._mode = [], [], {}, None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        ids, segments = prediction["ids"], prediction["segments"]
        errors = prediction.get("errors") or [None] * len(ids)
        decoded = [i for i, error in enumerate(errors) if error is None]
        if len(errors) != len(ids) or len(decoded) != len(segments):
            raise ValueError(
                f"a predict_step output has {len(ids)} ids, {len(errors)} errors and "
                f"{len(segments)} segments; expected as many errors as ids and one segments "
                "dict per id whose error is None"
            )
        mode = self._check_mode(prediction.get("mode"))
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        images = original_images(trainer, pl_module, batch) if self.overlay and decoded else None
        things = thing_ids(pl_module)
        known = batch_indices if batch_indices and len(batch_indices) == len(ids) else ids
        positions = [p if isinstance(p, int) else None for p in known]
        files, counts = {}, {}
        for k, i in enumerate(decoded):
            files[i] = f"{unique_stem(self._stems, ids[i])}.png"
            picture, entry, counts[i], painted = encoded(
                mode, ids[i], files[i], segments[k], things
            )
            write_png(folder / files[i], picture)
            if entry is not None:
                self._entries.append((positions[i], entry))
            if images is not None:
                blend = segment_overlay(images[k], painted, mode, self.alpha, ids[i])
                write_png(folder / overlay_name(files[i]), blend)
        for i, (id_, error) in enumerate(zip(ids, errors)):
            row = {"id": str(id_), "file": files.get(i, "")}
            if self.overlay:
                row["overlay"] = overlay_name(files[i]) if i in files else ""
            row.update(segments=counts.get(i, ""), error=error)
            self._rows.append((positions[i], row))

    def _check_mode(self, mode) -> str:
        if mode not in MODES:
            raise ValueError(f"a predict_step output's mode must be one of {MODES}, got {mode=}")
        if self._mode not in (None, mode):
            raise ValueError(
                f"a predict_step output has {mode=} after {self._mode!r}: one predict run "
                "writes one mode"
            )
        self._mode = mode
        return mode

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        """Gather every rank's rows and entries; rank 0 writes index.csv and predictions.json
        (the PNGs are written)."""
        rows, entries, mode = self._rows, self._entries, self._mode
        if trainer.world_size > 1:
            parts: list = [None] * trainer.world_size
            dist.all_gather_object(parts, (rows, entries, mode))  # every rank, once per epoch
            modes = sorted({m for _, _, m in parts if m is not None})
            if len(modes) > 1:  # raised on every rank alike, none left waiting
                raise ValueError(f"the ranks wrote different modes {modes}: expected one")
            mode = modes[0] if modes else None
            if trainer.global_rank != 0:
                return
            warn_shared([{row["file"] for _, row in part} for part, _, _ in parts])
            rows = [item for part, _, _ in parts for item in part]
            entries = [item for _, part, _ in parts for item in part]
        rows, entries = merged([rows]), merged([entries])
        folder = self._folder(trainer)
        columns = ["id", "file", *(["overlay"] if self.overlay else []), "segments", "error"]
        write_index(folder / "index.csv", rows, self.overlay, columns)
        written = [folder / "index.csv"]
        if mode == "panoptic":
            names = categories(pl_module, entries, thing_ids(pl_module))
            written.append(write_json(folder, {"annotations": entries, "categories": names}))
        elif mode == "instance":
            written.append(write_json(folder, [result for image in entries for result in image]))
        self._report(rows, mode, folder, written)

    def _report(self, rows: list[dict], mode: str | None, folder: Path, written: list) -> None:
        failed = [row["id"] for row in rows if row["error"] is not None]
        folder, index, *predictions = shown(folder, *written)
        kinds = f"{mode} PNGs" if mode else "PNGs"
        kinds += " and overlays" if self.overlay else ""
        coco = f" and COCO-format predictions to {predictions[0]}" if predictions else ""
        rank_zero_info(
            f"predict: wrote {len(rows) - len(failed)} {kinds} to {folder}, their index to "
            f"{index}{coco}" + (f" ({len(failed)} undecodable: no PNG)" if failed else "")
        )
        if failed:
            warnings.warn(
                f"{len(failed)} of {len(rows)} input image(s) could not be decoded and have no "
                f"PNG (see the error column of {index}): {failed[:MAX_NAMED]}",
                stacklevel=1,
            )


def overlay_name(file: str) -> str:
    return file.removesuffix(".png") + "_overlay.png"


def thing_ids(pl_module) -> set[int] | None:
    """The module's ``thing_ids`` as a set; None (every class a thing) where it has none."""
    things = getattr(pl_module, "thing_ids", None)
    if things is None:
        return None
    return {int(c) for c in (things.tolist() if hasattr(things, "tolist") else things)}


def encoded(mode: str, id_, file: str, result: dict, things: set[int] | None) -> tuple:
    """One decoded input's PNG image, its JSON entry (None for semantic), its number of
    segments, and the (h, w) map its overlay colours (segment values; semantic: class ids)."""
    seg = result["segmentation"].cpu()
    if seg.ndim != 2:
        raise ValueError(f"the segmentation of {id_!r} must be (h, w), got {tuple(seg.shape)}")
    if mode == "semantic":
        return mask_image(seg), None, int(torch.unique(seg[seg >= 0]).numel()), seg
    info = result["segments_info"]
    if mode == "panoptic":
        first: dict[int, dict] = {}
        for s in info:  # the queries of a fused class share one id: keep the first
            first.setdefault(int(s["id"]), s)
        info = list(first.values())
        segments = [
            {
                "id": int(s["id"]),
                "category_id": int(s["label_id"]),
                "score": float(s["score"]),
                "isthing": things is None or int(s["label_id"]) in things,
                "was_fused": bool(s["was_fused"]),
            }
            for s in info
        ]
        entry = {"image_id": str(id_), "file_name": file, "segments_info": segments}
        painted = seg.clamp(min=0)
        return id_image(painted), entry, len(segments), painted
    painted = torch.zeros_like(seg)
    for k, s in enumerate(info):  # a later instance over an earlier one, as the map has it
        painted[seg == int(s["id"])] = k + 1
    return id_image(painted), instance_results(id_, result), len(info), painted


def instance_results(id_, result: dict) -> list[dict]:
    """COCO results, one per instance: its class, score and mask as a compressed RLE."""
    info, masks = result["segments_info"], result["masks"].cpu()
    if len(masks) != len(info) or masks.shape[1:] != result["segmentation"].shape:
        raise ValueError(
            f"the instance masks of {id_!r} are {tuple(masks.shape)}: expected one "
            f"(h, w) = {tuple(result['segmentation'].shape)} mask per segments_info entry "
            f"({len(info)})"
        )
    if not len(info):
        return []
    from ..tasks.universal_metrics import _coco_tools, default_backend  # only instance mode

    array = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))  # (h, w, N)
    rles = _coco_tools(default_backend())[2].encode(array)
    return [
        {
            "image_id": str(id_),
            "category_id": int(s["label_id"]),
            "score": float(s["score"]),
            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        }
        for s, rle in zip(info, rles)
    ]


def id_image(ids: torch.Tensor) -> Image.Image:
    """(h, w) ids >= 0 as COCO panoptic's RGB PNG image: id = R + 256 G + 256² B."""
    values = ids.numpy().astype(np.int64)
    if values.max(initial=0) >= 256**3:
        raise ValueError(f"segment ids must be under 256**3 for an RGB PNG, got {values.max()}")
    rgb = np.stack([values % 256, values // 256 % 256, values // 256**2], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))  # (h, w, 3) uint8: RGB


def segment_overlay(image: np.ndarray, painted: torch.Tensor, mode: str, alpha: float, id_):
    """``image`` blended with a colour per segment value (per class for semantic)."""
    if image.shape[:2] != tuple(painted.shape):
        raise ValueError(
            f"the segmentation of {id_!r} is {tuple(painted.shape)}, its image "
            f"{image.shape[:2]}: expected the segmentation at the image's original size"
        )
    if mode == "semantic":
        return overlay_image(image, painted, alpha)
    colours = np.asarray(palette(), dtype=np.float32).reshape(256, 3)
    values = painted.numpy().astype(np.int64)
    colour = colours[(values - 1) % 255 + 1]  # 1, 2, ... cycle over the palette but black
    blend = np.where(values[..., None] > 0, (1 - alpha) * image + alpha * colour, image)
    return Image.fromarray(blend.round().astype(np.uint8))


def categories(pl_module, annotations: list[dict], things: set[int] | None) -> list[dict]:
    """COCO panoptic categories: the module's ``id2label``, and any other class predicted."""
    names = {int(k): str(v) for k, v in (getattr(pl_module, "id2label", None) or {}).items()}
    for annotation in annotations:
        for s in annotation["segments_info"]:
            names.setdefault(s["category_id"], str(s["category_id"]))
    return [
        {"id": c, "name": names[c], "isthing": things is None or c in things} for c in sorted(names)
    ]


def write_json(folder: Path, content) -> Path:
    path = folder / "predictions.json"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(content, f)

    write_atomically(path, write)
    return path
