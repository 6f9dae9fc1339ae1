"""UniversalMetrics against oracles that do not share its code: perfect predictions (1 each),
hand-computed PQ and AP, and one update on all the data against states gathered from halves."""

import math

import pytest
import torch
from torchmetrics.detection import PanopticQuality

from nat_lightning.tasks.universal_metrics import (
    MaskAP,
    PanopticQualityParts,
    UniversalMetrics,
)

NAMES = {0: "cat", 1: "dog", 2: "sky", 3: "grass"}
STUFF = [2, 3]
H = W = 16


def scene(seed: int):
    """Ground truth of one image: two stuff halves, up to three thing boxes, a void strip;
    each segment as (label, mask)."""
    g = torch.Generator().manual_seed(seed)
    semantic = torch.full((H, W), 2)
    semantic[H // 2 :] = 3
    instance = torch.zeros(H, W, dtype=torch.long)
    segments = []
    for i in range(1, 1 + seed % 4):
        top, left = torch.randint(0, H - 4, (2,), generator=g).tolist()
        label = int(torch.randint(0, 2, (1,), generator=g))
        semantic[top : top + 4, left : left + 4] = label
        instance[top : top + 4, left : left + 4] = i
    semantic[:, -1] = 255  # void
    for i in instance.unique().tolist():
        if i:
            mask = (instance == i) & (semantic != 255)
            if mask.any():
                segments.append((int(semantic[mask][0]), mask))
    for label in STUFF:
        segments.append((label, semantic == label))
    return semantic, instance, segments


def batch(seeds):
    """Ground truth in the contract's form, and logits whose post-processing is that truth:
    one confident query per segment, the rest "no object"."""
    semantics, panoptics, instances, class_logits, mask_logits = [], [], [], [], []
    queries = 8
    for seed in seeds:
        semantic, instance, segments = scene(seed)
        semantics.append(semantic)
        panoptics.append(torch.stack([semantic, instance], -1))
        things = [(label, mask) for label, mask in segments if label not in STUFF]
        masks = [m for _, m in things] or [torch.zeros(0, H, W, dtype=torch.bool)]
        labels = torch.tensor([label for label, _ in things], dtype=torch.long)
        instances.append((torch.cat([m.view(-1, H, W) for m in masks]), labels))
        cls = torch.full((queries, len(NAMES) + 1), -10.0)
        cls[:, -1] = 10.0
        masks = torch.full((queries, H, W), -10.0)
        for q, (label, mask) in enumerate(segments):
            cls[q, label], cls[q, -1] = 10.0, -10.0
            masks[q][mask] = 10.0
        class_logits.append(cls)
        mask_logits.append(masks)
    return (torch.stack(class_logits), torch.stack(mask_logits), torch.stack(semantics),
            torch.stack(panoptics), instances)  # fmt: skip


def metrics(**kwargs):
    return UniversalMetrics(NAMES, stuff_ids=STUFF, **kwargs)


def test_perfect_predictions_score_one():
    m = metrics()
    m.update(*batch([1, 2, 3]))
    m.update(*batch([5, 7]))
    values = m.compute()
    for key in ("val/pq", "val/pq_things", "val/pq_stuff", "val/sq", "val/rq", "val/map",
                "val/map_50", "val/map_75", "val/miou", "val/pixel_acc"):  # fmt: skip
        assert values[key] == pytest.approx(1.0, abs=1e-6), key
    assert all(isinstance(v, float) for v in values.values())
    assert set(values) >= {f"val/iou/{name}" for name in NAMES.values()}


def test_hand_computed_panoptic_quality():
    """Image 1: thing (cols 0-1, 8 px) predicted with 2 more px: IoU 0.8; stuff (cols 2-3)
    predicted on the 6 px left: IoU 0.75. Image 2: a 2 x 2 thing missed, all predicted stuff:
    stuff IoU 12/16. Things: TP 1 (0.8), FN 1: sq 0.8, rq 2/3. Stuff: TP 2 (0.75 each)."""
    thing, stuff = 0, 1
    target = torch.zeros(2, 4, 4, 2, dtype=torch.long)
    target[0, :, :2] = torch.tensor([thing, 1])
    target[0, :, 2:] = torch.tensor([stuff, 0])
    target[1] = torch.tensor([stuff, 0])
    target[1, :2, :2] = torch.tensor([thing, 1])
    preds = target.clone()
    preds[0, :2, 2] = torch.tensor([thing, 1])
    preds[1] = torch.tensor([stuff, 0])
    pq = PanopticQualityParts([thing], [stuff], unassigned=2)
    pq.update(preds, target)
    values = {k: float(v) for k, v in pq.compute().items()}
    expected = {"sq_things": 0.8, "rq_things": 2 / 3, "pq_things": 0.8 * 2 / 3,
                "sq_stuff": 0.75, "rq_stuff": 1.0, "pq_stuff": 0.75,
                "pq": (0.8 * 2 / 3 + 0.75) / 2, "sq": 0.775, "rq": (2 / 3 + 1) / 2}  # fmt: skip
    assert values == pytest.approx(expected)
    plain = PanopticQuality([thing], [stuff], return_sq_and_rq=True)
    plain.update(preds, target)
    assert plain.compute().tolist() == pytest.approx([values["pq"], values["sq"], values["rq"]])


def test_a_segment_left_unassigned_is_a_false_negative():
    """panopticapi's rule (torchmetrics alone would ignore a segment predicted void)."""
    target = torch.zeros(1, 4, 4, 2, dtype=torch.long)
    target[0, :, :2] = torch.tensor([0, 1])  # a thing, 8 px
    target[0, :, 2:] = torch.tensor([1, 0])  # stuff, 8 px
    preds = target.clone()
    preds[0, :, :2] = torch.tensor([2, 0])  # the thing's pixels: no segment won them
    pq = PanopticQualityParts([0], [1], unassigned=2)
    pq.update(preds, target)
    values = {k: float(v) for k, v in pq.compute().items()}
    assert values["pq_things"] == 0.0 and values["pq_stuff"] == 1.0 and values["pq"] == 0.5


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_hand_computed_mask_ap(backend):
    """One instance; a wrong detection outscores the right one: precision 1/2 at every recall."""
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :4, :4] = True
    wrong = torch.zeros(1, 8, 8, dtype=torch.bool)
    wrong[0, 4:, 4:] = True
    ap = MaskAP(backend)
    ap.update([(torch.cat([wrong, gt]), torch.tensor([0.9, 0.6]), torch.tensor([3, 3]))],
              [(gt, torch.tensor([3]))])  # fmt: skip
    values = ap.compute()
    assert [float(values[k]) for k in ("map", "map_50", "map_75")] == pytest.approx([0.5] * 3)


def random_instances(seed: int, images: int = 4):
    g = torch.Generator().manual_seed(seed)
    preds, target = [], []
    for i in range(images):
        n, m = i % 3, (i + 1) % 4
        gt = torch.rand(n, 12, 10, generator=g) > 0.5
        noise = torch.rand(n, 12, 10, generator=g) > 0.8
        found = torch.cat([gt ^ noise, torch.rand(m, 12, 10, generator=g) > 0.6])
        preds.append(
            (found, torch.rand(n + m, generator=g), torch.randint(0, 3, (n + m,), generator=g))
        )
        target.append((gt, torch.randint(0, 3, (n,), generator=g)))
    return preds, target


def test_backends_agree():
    results = []
    for backend in ("faster_coco_eval", "pycocotools"):
        ap = MaskAP(backend)
        for seed in range(3):
            ap.update(*random_instances(seed))
        results.append({k: float(v) for k, v in ap.compute().items()})
    assert 0 < results[0]["map"] < 1
    assert results[0] == pytest.approx(results[1], abs=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_empty_predictions_and_empty_truth_do_not_crash():
    class_logits, mask_logits, semantic, panoptic, instances = batch([0, 4])  # no things
    class_logits[..., -1] = 20.0  # every query "no object"
    m = metrics()
    m.update(class_logits, mask_logits, semantic, panoptic, instances)
    values = m.compute()
    assert values["val/map"] == -1.0  # COCO's: nothing to find
    assert values["val/pq"] == 0.0 and math.isnan(values["val/pq_things"])
    void = torch.full_like(semantic, 255)
    m.reset()
    m.update(class_logits, mask_logits, void, torch.stack([void, void * 0], -1), instances)
    values = m.compute()
    assert math.isnan(values["val/pq"]) and math.isnan(values["val/miou"])
    assert values["val/map"] == -1.0
    empty = metrics()
    assert empty.compute()["val/map"] == -1.0


def noisy(seeds, seed: int):
    """The perfect batch with its logits disturbed: imperfect, varied scores."""
    data = list(batch(seeds))
    g = torch.Generator().manual_seed(seed)
    data[0] = data[0] + 8 * torch.randn(data[0].shape, generator=g)
    data[1] = data[1] + 4 * torch.randn(data[1].shape, generator=g)
    return data


def halves():
    data = noisy([1, 2, 3, 6, 7, 9], 0)
    whole, first, second = metrics(), metrics(), metrics()
    whole.update(*data)
    first.update(*(d[:3] for d in data))
    second.update(*(d[3:] for d in data))
    return whole.compute(), first, second


def test_merged_halves_equal_one_update_on_all():
    expected, first, second = halves()
    assert 0 < expected["val/pq"] < 1 and 0 < expected["val/map"] < 1
    for name in ("panoptic", "instance"):
        getattr(second, name).merge_state(getattr(first, name))  # first's state, then second's
    merged = {**second.panoptic.compute(), **second.instance.compute()}
    for key, value in merged.items():
        assert float(value) == pytest.approx(expected[f"val/{key}"], nan_ok=True), key


def test_gathered_states_equal_one_update_on_all():
    """Each metric's compute() gathers, as under DDP, through a stand-in for all_gather:
    rank 0's states then rank 1's."""
    expected, rank0, rank1 = halves()
    for name in ("panoptic", "instance"):
        part0, part1 = getattr(rank0, name), getattr(rank1, name)
        sent = []
        part1.dist_sync_fn = lambda t, group=None: sent.append(t) or [t]
        part1.distributed_available_fn = part0.distributed_available_fn = lambda: True
        part1.compute()
        received = iter(sent)
        part0.dist_sync_fn = lambda t, group=None: [t, next(received)]
        for key, value in part0.compute().items():
            assert float(value) == pytest.approx(expected[f"val/{key}"], nan_ok=True), key


def test_any_category_that_is_no_class_is_void():
    """The void strip marked 4 (the class count, our "unassigned" category) or -1, not 255,
    and predicted as stuff: void still, so the stuff segments' IoU stays 1."""
    for void in (len(NAMES), -1):
        class_logits, mask_logits, semantic, panoptic, instances = batch([1, 2])
        panoptic[..., 0][semantic == 255] = void
        labels = class_logits.argmax(-1)  # the stuff queries also cover the void strip
        mask_logits[..., : H // 2, -1][labels == 2] = 10.0
        mask_logits[..., H // 2 :, -1][labels == 3] = 10.0
        m = metrics()
        m.update(class_logits, mask_logits, semantic, panoptic, instances)
        assert m.compute()["val/pq"] == pytest.approx(1.0)
