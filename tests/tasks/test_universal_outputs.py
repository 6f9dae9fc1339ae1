"""universal_outputs against transformers' own post-processing, the oracle (their PIL-backend
processors: torchvision is not installed here; their post-processing is the same code, except
that OneFormer's resizes masks with torchvision, so those cases run without target sizes)."""

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from nat_lightning.tasks.universal_outputs import (
    instance_segmentation,
    oneformer_instance_segmentation,
    panoptic_segmentation,
    semantic_segmentation,
)

transformers = pytest.importorskip("transformers")
M2F_SIZE = (384, 384)  # the size Mask2FormerImageProcessor upsamples masks to


@pytest.fixture(scope="module")
def m2f():
    return transformers.Mask2FormerImageProcessorPil()


@pytest.fixture(scope="module")
def oneformer():
    processor = transformers.OneFormerImageProcessorPil()
    processor.class_info_file = ""  # its instance post-processing reads it
    processor.metadata = {"thing_ids": [1, 2]}
    return processor


def outputs(seed: int):
    """Seeded logits of several shapes; every fifth case has every query scoring "no object"."""
    g = torch.Generator().manual_seed(seed)
    batch, queries, classes = 1 + seed % 2, (4, 9, 6)[seed % 3], (3, 7)[seed % 2]
    height, width = ((8, 8), (12, 10))[seed % 2]
    class_logits = torch.randn(batch, queries, classes + 1, generator=g) * 3
    if seed % 5 == 0:
        class_logits[..., -1] += 20
    mask_logits = torch.randn(batch, queries, height, width, generator=g) * 4
    sizes = [(30 + 7 * i, 41 - 3 * i) for i in range(batch)] if seed % 2 else None
    return class_logits, mask_logits, sizes


def hf(class_logits, mask_logits):
    return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a["segmentation"].long(), b["segmentation"].long())
        assert a["segments_info"] == b["segments_info"]


def unique_ids(segments_info) -> bool:
    """Whether each id is one segment: transformers' compute_segments can give two the same."""
    labels = Counter(s["id"] for s in segments_info)
    return all(labels[s["id"]] == 1 or s["was_fused"] for s in segments_info) and len(
        {(s["id"], s["label_id"]) for s in segments_info}
    ) == len(labels)


SEEDS = range(6)  # Mask2Former's processor works at 384 x 384: a few small cases


@pytest.mark.parametrize("seed", SEEDS)
def test_semantic_equals_transformers(seed, m2f, oneformer):
    class_logits, mask_logits, sizes = outputs(seed)
    ours = semantic_segmentation(class_logits, mask_logits, sizes, mask_size=M2F_SIZE)
    theirs = m2f.post_process_semantic_segmentation(hf(class_logits, mask_logits), sizes)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    ours = semantic_segmentation(class_logits, mask_logits, sizes)
    theirs = oneformer.post_process_semantic_segmentation(hf(class_logits, mask_logits), sizes)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_instance_equals_mask2former(seed, threshold, m2f):
    class_logits, mask_logits, sizes = outputs(seed)
    ours = instance_segmentation(class_logits, mask_logits, threshold, sizes, M2F_SIZE)
    out = hf(class_logits, mask_logits)
    kwargs = {"threshold": threshold, "target_sizes": sizes}
    assert_same(ours, m2f.post_process_instance_segmentation(out, **kwargs))
    binary = m2f.post_process_instance_segmentation(out, return_binary_maps=True, **kwargs)
    for a, b in zip(ours, binary):
        assert a["masks"].dtype == torch.bool and len(a["masks"]) == len(a["segments_info"])
        if b["segments_info"]:
            assert torch.equal(a["masks"], b["segmentation"].bool())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_panoptic_equals_transformers(seed, threshold, m2f, oneformer):
    class_logits, mask_logits, sizes = outputs(seed)
    out = hf(class_logits, mask_logits)
    ours = panoptic_segmentation(class_logits, mask_logits, threshold, target_sizes=sizes,
                                 mask_size=M2F_SIZE)  # fmt: skip
    theirs = m2f.post_process_panoptic_segmentation(out, threshold, label_ids_to_fuse=set(),
                                                    target_sizes=sizes)  # fmt: skip
    assert_same(ours, theirs)
    if sizes is None:  # OneFormer's resize needs torchvision
        ours = panoptic_segmentation(class_logits, mask_logits, threshold, antialias=True)
        theirs = oneformer.post_process_panoptic_segmentation(
            out, threshold, label_ids_to_fuse=set()
        )
        assert_same(ours, theirs)


def test_fused_panoptic_equals_transformers_where_its_ids_are_unique(oneformer):
    """OneFormer's processor: Mask2Former's compute_segments without its 384 x 384 upsampling."""
    compared = differ = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        class_logits = torch.randn(4, 12, 5, generator=g) * 3
        mask_logits = torch.randn(4, 12, 6, 6, generator=g) * 4
        kwargs = {"overlap_mask_area_threshold": 0.0, "label_ids_to_fuse": {0, 1}}
        ours = panoptic_segmentation(class_logits, mask_logits, 0.3, **kwargs)
        theirs = oneformer.post_process_panoptic_segmentation(
            hf(class_logits, mask_logits), 0.3, **kwargs
        )
        for a, b in zip(ours, theirs):
            assert unique_ids(a["segments_info"])
            if unique_ids(b["segments_info"]):
                assert_same([a], [b])
                compared += 1
            else:
                differ += 1
    assert compared > 10 and differ > 0  # both kinds occurred


def test_a_new_segment_after_a_fused_one_takes_a_new_id():
    """Queries: stuff 0, thing 2, stuff 0 again, thing 2 again, each winning its own quarter.
    transformers numbers the last thing from the reused stuff id: 2, the first thing's id."""
    class_logits = torch.full((1, 4, 4), -10.0)
    class_logits[0, [0, 1, 2, 3], [0, 2, 0, 2]] = 10.0
    mask_logits = torch.full((1, 4, 4, 4), -10.0)
    for q, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        mask_logits[0, q, r : r + 2, c : c + 2] = 10.0
    (result,) = panoptic_segmentation(class_logits, mask_logits, label_ids_to_fuse={0})
    assert [(s["id"], s["label_id"]) for s in result["segments_info"]] == [
        (1, 0), (2, 2), (1, 0), (3, 2)
    ]  # fmt: skip
    assert result["segmentation"].tolist() == [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [1, 1, 3, 3],
        [1, 1, 3, 3],
    ]


@pytest.mark.parametrize("seed", [0, 2, 4, 6, 8, 10, 12, 14])
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_oneformer_instance_equals_transformers(seed, threshold, oneformer):
    class_logits, mask_logits, _ = outputs(seed)
    out = hf(class_logits, mask_logits)
    ours = oneformer_instance_segmentation(class_logits, mask_logits, threshold)
    assert_same(ours, oneformer.post_process_instance_segmentation(out, threshold=threshold))
    for result in ours:
        ids = [s["id"] for s in result["segments_info"]]
        assert torch.equal(
            result["masks"], result["segmentation"] == torch.tensor(ids).view(-1, 1, 1)
        )
    ours = oneformer_instance_segmentation(class_logits, mask_logits, None, thing_ids=[1, 2])
    theirs = oneformer.post_process_instance_segmentation(out, "panoptic", is_demo=False)
    assert_same(ours, theirs)


def test_no_object_everywhere_gives_empty_results():
    class_logits = torch.zeros(2, 3, 4)
    class_logits[..., -1] = 20.0
    mask_logits = torch.randn(2, 3, 5, 5)
    sizes = [(7, 9), (5, 5)]
    for result, size in zip(
        panoptic_segmentation(class_logits, mask_logits, target_sizes=sizes), sizes
    ):
        assert result["segments_info"] == [] and result["segmentation"].shape == size
        assert (result["segmentation"] == -1).all()
    for fn in (instance_segmentation, oneformer_instance_segmentation):
        for result, size in zip(fn(class_logits, mask_logits, target_sizes=sizes), sizes):
            assert result["segments_info"] == [] and result["masks"].shape == (0, *size)
            assert (result["segmentation"] == -1).all()


def test_target_sizes_must_match_the_batch():
    with pytest.raises(ValueError, match="one target size per image"):
        semantic_segmentation(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5, 5), [(5, 5)])
