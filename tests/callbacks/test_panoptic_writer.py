"""PanopticWriter (nat_lightning.callbacks.panoptic_writer) through a real ``Trainer.predict``
with a stub universal segmenter: the RGB PNGs decode back to the given segment ids, the RLEs to
the given instance masks, the palette PNGs to the class ids; predictions.json and index.csv
follow input order; an undecodable input has its error and no file; overlays colour each
segment; the rows of two ranks merge in input order (all_gather_object faked); bad arguments
and outputs are refused."""

import csv
import json
import types

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from nat_lightning.callbacks import panoptic_writer
from nat_lightning.callbacks.panoptic_writer import PanopticWriter

BAD = "undecodable image"
SIZES = [(6, 9), (5, 7), (4, 4), (7, 5), (3, 8)]  # (h, w) of each input
IDS = [f"/in/img{i}.jpg" for i in range(len(SIZES))]
BROKEN = 2  # the undecodable input
GREY = 128  # every image is grey 0.5: an overlay pixel's colour is its segment's alone
NAMES = {0: "sky", 1: "cat", 2: "dog"}


def collate(indices: list[int]) -> dict:
    """The data module's batch: ids of every input, pixel_values of the decoded ones only,
    padded to the batch's largest, with their content and original sizes."""
    kept = [i for i in indices if i != BROKEN]
    sizes = torch.tensor([SIZES[i] for i in kept]).view(-1, 2)
    h, w = sizes.amax(0).tolist() if kept else (1, 1)
    pixel_values = torch.zeros(len(kept), 3, h, w)  # normalised 0.5 is 0: grey, padding too
    return {
        "ids": [IDS[i] for i in indices],
        "decoded": [i != BROKEN for i in indices],
        "pixel_values": pixel_values,
        "content": sizes,
        "sizes": sizes,
    }


class StubSegmenter(L.LightningModule):
    """predict_step returns the universal segmenter's output: ``results[i]`` for input i."""

    def __init__(self, mode: str, results: dict[int, dict], thing_ids=None):
        super().__init__()
        self.mode, self.results, self.id2label = mode, results, NAMES
        self.preprocessing = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
        if thing_ids is not None:
            self.thing_ids = thing_ids

    def predict_step(self, batch, batch_idx):
        decoded = batch["decoded"]
        return {
            "ids": batch["ids"],
            "errors": [None if ok else BAD for ok in decoded],
            "mode": self.mode,
            "segments": [
                self.results[IDS.index(id_)] for id_, ok in zip(batch["ids"], decoded) if ok
            ],
        }


def predict(tmp_path, model, writer) -> None:
    loader = torch.utils.data.DataLoader(range(len(SIZES)), batch_size=2, collate_fn=collate)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[writer],
    )
    with pytest.warns(UserWarning, match=r"1 of 5 input image\(s\) could not be decoded"):
        trainer.predict(model, loader, return_predictions=False)


def read_index(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rgb_ids(path) -> np.ndarray:
    """COCO panoptic's decoding of an RGB PNG: R + 256 G + 256² B."""
    image = Image.open(path)
    assert image.mode == "RGB"
    rgb = np.array(image).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def info(id_, label, score, fused=False) -> dict:
    return {"id": id_, "label_id": label, "was_fused": fused, "score": score}


def panoptic_results() -> dict[int, dict]:
    g = torch.Generator().manual_seed(0)
    seg0 = torch.randint(0, 4, SIZES[0], generator=g, dtype=torch.int32)  # 0: no segment
    seg1 = torch.tensor([1, 300, 70000], dtype=torch.int32)[
        torch.randint(0, 3, SIZES[1], generator=g)
    ]  # ids over 255 and over 65535: G and B count
    seg3 = torch.randint(1, 3, SIZES[3], generator=g, dtype=torch.int32)
    return {
        0: {  # sky is fused: its two queries share id 1, listed once with the first's score
            "segmentation": seg0,
            "segments_info": [
                info(1, 0, 0.9, True),
                info(2, 1, 0.8),
                info(1, 0, 0.7, True),
                info(3, 2, 0.6),
            ],
        },  # fmt: skip
        1: {
            "segmentation": seg1,
            "segments_info": [info(1, 1, 0.5), info(300, 2, 0.75), info(70000, 0, 1.0, True)],
        },
        3: {"segmentation": seg3, "segments_info": [info(1, 2, 0.5), info(2, 2, 0.25)]},
        4: {"segmentation": torch.full(SIZES[4], -1, dtype=torch.int32), "segments_info": []},
    }


def test_panoptic_pngs_decode_to_the_segment_ids_and_the_json_follows_input_order(tmp_path):
    results = panoptic_results()
    writer = PanopticWriter(overlay=True, alpha=0.5)
    predict(tmp_path, StubSegmenter("panoptic", results, thing_ids=torch.tensor([1, 2])), writer)
    folder = tmp_path / "panoptic"
    decoded = [i for i in range(len(SIZES)) if i != BROKEN]
    for i in decoded:
        expected = results[i]["segmentation"].clamp(min=0).numpy()
        np.testing.assert_array_equal(rgb_ids(folder / f"img{i}.png"), expected)
    written = {p.name for p in folder.iterdir()}
    assert "img2.png" not in written and "img2_overlay.png" not in written

    rows = read_index(folder / "index.csv")
    assert list(rows[0]) == ["id", "file", "overlay", "segments", "error"]
    assert [r["id"] for r in rows] == IDS
    assert [r["file"] for r in rows] == ["img0.png", "img1.png", "", "img3.png", "img4.png"]
    assert [r["segments"] for r in rows] == ["3", "3", "", "2", "0"]
    assert [r["error"] for r in rows] == ["", "", BAD, "", ""]
    assert rows[2]["overlay"] == "" and rows[0]["overlay"] == "img0_overlay.png"

    coco = json.loads((folder / "predictions.json").read_text())
    annotations = coco["annotations"]
    assert [a["image_id"] for a in annotations] == [IDS[i] for i in decoded]
    assert [a["file_name"] for a in annotations] == [f"img{i}.png" for i in decoded]
    assert annotations[0]["segments_info"] == [
        {"id": 1, "category_id": 0, "score": 0.9, "isthing": False, "was_fused": True},
        {"id": 2, "category_id": 1, "score": 0.8, "isthing": True, "was_fused": False},
        {"id": 3, "category_id": 2, "score": 0.6, "isthing": True, "was_fused": False},
    ]
    assert [s["id"] for s in annotations[1]["segments_info"]] == [1, 300, 70000]
    assert annotations[3]["segments_info"] == []
    assert coco["categories"] == [
        {"id": 0, "name": "sky", "isthing": False},
        {"id": 1, "name": "cat", "isthing": True},
        {"id": 2, "name": "dog", "isthing": True},
    ]

    seg = results[0]["segmentation"].numpy()
    overlay = Image.open(folder / "img0_overlay.png")
    assert overlay.size == (9, 6) and overlay.mode == "RGB"
    colours = np.array(overlay)
    assert (colours[seg == 0] == GREY).all()  # no segment: the image itself
    by_segment = {s: {tuple(c) for c in colours[seg == s]} for s in (1, 2, 3)}
    assert all(len(c) == 1 for c in by_segment.values())  # one colour per segment
    assert len(set.union(*by_segment.values()) | {(GREY,) * 3}) == 4  # all different
    assert np.array(Image.open(folder / "img4_overlay.png")).tolist() == [[[GREY] * 3] * 8] * 3


def instance_results() -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    """Mask2Former's convention for inputs 0 and 1 (ids from 0, a later instance over an
    earlier one, -1 none), OneFormer's for 3 (ids from 1, no overlaps, 0 none), none found
    in 4; and, independently, the PNG each should give (k + 1 for the k-th instance)."""
    g = torch.Generator().manual_seed(1)
    results, expected = {}, {}
    for i, n in ((0, 3), (1, 2)):
        masks = torch.rand(n, *SIZES[i], generator=g) > 0.6
        painted = np.zeros(SIZES[i], dtype=np.int64)
        seg = torch.full(SIZES[i], -1, dtype=torch.int32)
        for k in range(n):
            painted[masks[k].numpy()] = k + 1
            seg[masks[k]] = k
        infos = [info(k, k % 3, round(0.9 - k / 10, 6)) for k in range(n)]
        results[i] = {"segmentation": seg, "segments_info": infos, "masks": masks}
        expected[i] = painted
    seg = torch.randint(0, 3, SIZES[3], generator=g, dtype=torch.int32)
    results[3] = {
        "segmentation": seg,
        "segments_info": [info(1, 2, 0.75), info(2, 1, 0.5)],
        "masks": torch.stack([seg == 1, seg == 2]),
    }
    expected[3] = seg.numpy()  # ids 1, 2 are the instances 0, 1: k + 1 already
    results[4] = {
        "segmentation": torch.full(SIZES[4], -1, dtype=torch.int32),
        "segments_info": [],
        "masks": torch.zeros(0, *SIZES[4], dtype=torch.bool),
    }
    expected[4] = np.zeros(SIZES[4], dtype=np.int64)
    return results, expected


def test_instance_rles_decode_to_the_masks_in_input_order(tmp_path):
    results, expected = instance_results()
    folder = tmp_path / "elsewhere"  # absolute: not under default_root_dir
    predict(tmp_path / "root", StubSegmenter("instance", results), PanopticWriter(str(folder)))
    for i, painted in expected.items():
        np.testing.assert_array_equal(rgb_ids(folder / f"img{i}.png"), painted)
    rows = read_index(folder / "index.csv")
    assert list(rows[0]) == ["id", "file", "segments", "error"]
    assert [r["segments"] for r in rows] == ["3", "2", "", "2", "0"]
    assert not (folder / "img2.png").exists() and not (tmp_path / "root" / "panoptic").exists()

    coco = json.loads((folder / "predictions.json").read_text())
    order = [(i, k) for i in (0, 1, 3) for k in range(len(results[i]["segments_info"]))]
    assert [r["image_id"] for r in coco] == [IDS[i] for i, _ in order]
    for result, (i, k) in zip(coco, order):
        segment = results[i]["segments_info"][k]
        assert result["category_id"] == segment["label_id"]
        assert result["score"] == segment["score"]
        assert result["segmentation"]["size"] == list(SIZES[i])
        rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle), results[i]["masks"][k].numpy())


def test_semantic_pngs_read_back_as_class_ids_with_class_overlays(tmp_path):
    g = torch.Generator().manual_seed(2)
    results = {
        i: {"segmentation": torch.randint(0, 3, size, generator=g), "segments_info": []}
        for i, size in enumerate(SIZES)
        if i != BROKEN
    }
    predict(tmp_path, StubSegmenter("semantic", results), PanopticWriter("sem", overlay=True))
    folder = tmp_path / "sem"
    for i, result in results.items():
        image = Image.open(folder / f"img{i}.png")
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), result["segmentation"].numpy())
        assert Image.open(folder / f"img{i}_overlay.png").size == SIZES[i][::-1]
    rows = read_index(folder / "index.csv")
    assert [r["segments"] for r in rows] == [
        str(len(results[i]["segmentation"].unique())) if i in results else "" for i in range(5)
    ]
    assert not (folder / "predictions.json").exists()


def fake_trainer(tmp_path, rank=0, world=1):
    return types.SimpleNamespace(
        default_root_dir=str(tmp_path), world_size=world, global_rank=rank, datamodule=None
    )


def output(ids, mode="panoptic", errors=None) -> dict:
    seg = torch.ones(2, 2, dtype=torch.int32)
    segments = [{"segmentation": seg, "segments_info": [info(1, 0, 0.5)]} for _ in ids]
    return {"ids": ids, "errors": errors, "mode": mode, "segments": segments}


def test_rank_zero_writes_both_ranks_rows_in_input_order(tmp_path, monkeypatch):
    other = PanopticWriter()  # rank 1: inputs 1 and 3, one stem the same as rank 0's
    other.write_on_batch_end(fake_trainer(tmp_path), None, output(["b/x.png", 3]), [1, 3], {}, 0, 0)
    sent = (other._rows, other._entries, other._mode)
    monkeypatch.setattr(
        panoptic_writer.dist, "all_gather_object", lambda parts, mine: parts.__setitem__(
            slice(None), [mine, sent]
        )
    )  # fmt: skip
    writer, trainer = PanopticWriter(), fake_trainer(tmp_path, world=2)
    writer.on_predict_epoch_start(trainer, None)
    writer.write_on_batch_end(trainer, None, output(["a/x.png", 2]), [0, 2], {}, 0, 0)
    with pytest.warns(UserWarning, match=r"several ranks wrote \['x.png'\]"):
        writer.on_predict_epoch_end(trainer, None)
    folder = tmp_path / "panoptic"
    assert [r["id"] for r in read_index(folder / "index.csv")] == ["a/x.png", "b/x.png", "2", "3"]
    coco = json.loads((folder / "predictions.json").read_text())
    assert [a["image_id"] for a in coco["annotations"]] == ["a/x.png", "b/x.png", "2", "3"]
    assert coco["categories"] == [{"id": 0, "name": "0", "isthing": True}]  # no id2label

    (folder / "index.csv").unlink()
    rank1 = fake_trainer(tmp_path, rank=1, world=2)
    writer.on_predict_epoch_end(rank1, None)  # gathers too, writes nothing
    assert not (folder / "index.csv").exists()


def test_bad_arguments_and_outputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got alpha=2"):
        PanopticWriter(alpha=2)
    with pytest.raises(ValueError, match="output_dir must be a non-empty folder path"):
        PanopticWriter(output_dir="")
    with pytest.raises(ValueError, match="overlay must be True or False, got overlay='yes'"):
        PanopticWriter(overlay="yes")
    trainer, writer = fake_trainer(tmp_path), PanopticWriter()
    short = {**output([0, 1]), "segments": []}
    with pytest.raises(ValueError, match="2 ids, 2 errors and 0 segments"):
        writer.write_on_batch_end(trainer, None, short, [0, 1], {}, 0, 0)
    with pytest.raises(ValueError, match=r"mode must be one of .* got mode='things'"):
        writer.write_on_batch_end(trainer, None, output([0], mode="things"), [0], {}, 0, 0)
    writer.write_on_batch_end(trainer, None, output([0]), [0], {}, 0, 0)
    with pytest.raises(ValueError, match="mode='semantic' after 'panoptic'"):
        writer.write_on_batch_end(trainer, None, output([1], mode="semantic"), [1], {}, 0, 0)
    masks = {**output([2], mode="instance"), "segments": [{**output([2])["segments"][0]}]}
    masks["segments"][0]["masks"] = torch.zeros(2, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"instance masks of 2 are \(2, 2, 2\): expected one"):
        PanopticWriter().write_on_batch_end(trainer, None, masks, [2], {}, 0, 0)


@pytest.mark.slow
def test_two_processes_write_one_index_and_one_json_in_input_order(tmp_path):
    import signal

    results = panoptic_results()
    loader = torch.utils.data.DataLoader(range(len(SIZES)), batch_size=1, collate_fn=collate)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[PanopticWriter()],
    )
    signal.alarm(240)
    try:
        trainer.predict(StubSegmenter("panoptic", results), loader, return_predictions=False)
    finally:
        signal.alarm(0)
    folder = tmp_path / "panoptic"
    rows = read_index(folder / "index.csv")
    assert [r["id"] for r in rows] == IDS
    assert [r["error"] for r in rows] == ["", "", BAD, "", ""]
    coco = json.loads((folder / "predictions.json").read_text())
    assert [a["image_id"] for a in coco["annotations"]] == [IDS[i] for i in (0, 1, 3, 4)]
    for i in (0, 1, 3, 4):
        expected = results[i]["segmentation"].clamp(min=0).numpy()
        np.testing.assert_array_equal(rgb_ids(folder / f"img{i}.png"), expected)
