"""ATSS assignment on hand-computed cases, and inside torchvision's RetinaNet."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from sod.config import DetectorConfig
from sod.models.assign import atss_assign
from sod.models.detector import build_detector

# Level 0: three 4x4 anchors centred at x = 2, 6, 10 (y = 2); level 1: two 8x8 anchors centred at x = 4, 12.
ANCHORS = torch.tensor(
    [[0, 0, 4, 4], [4, 0, 8, 4], [8, 0, 12, 4], [0, 0, 8, 8], [8, 0, 16, 8]],
    dtype=torch.float32,
)
LEVELS = [3, 2]


def test_each_box_gets_the_candidates_above_mean_plus_std_of_their_ious() -> None:
    # Box A [0,0,8,8], centre (4, 4): candidates (topk 2 per level) anchors 0, 1 (IoU 16/64 = 0.25 each),
    # 3 (IoU 1) and 4 (IoU 0): mean 0.375, std 0.433 -> threshold 0.808: only anchor 3.
    # Box B [9,1,11,3], centre (10, 2): candidates 2 (IoU 4/16 = 0.25), 1 (0), 4 (4/64 = 0.0625), 3 (0):
    # mean 0.078, std 0.118 -> threshold 0.196: only anchor 2 (its centre (10, 2) is inside B).
    boxes = torch.tensor([[0, 0, 8, 8], [9, 1, 11, 3]], dtype=torch.float32)
    assert atss_assign(boxes, ANCHORS, LEVELS, topk=2).tolist() == [-1, -1, 1, 0, -1]


def test_a_box_whose_candidates_all_fall_below_the_threshold_keeps_its_best() -> None:
    # Box [1,0,7,4], centre (4, 2): candidate IoUs 12/28, 12/28 (anchors 0, 1), 24/64 (3), 0 (4): mean 0.308,
    # std 0.207 -> threshold 0.515 above all of them; the first best candidate (anchor 0) stays positive.
    boxes = torch.tensor([[1, 0, 7, 4]], dtype=torch.float32)
    assert atss_assign(boxes, ANCHORS, LEVELS, topk=2).tolist() == [0, -1, -1, -1, -1]


def test_an_anchor_whose_centre_is_outside_the_box_is_never_positive() -> None:
    # Box [0,0,3,8]: anchor 3 (centre (4, 4)) has the best IoU of its level (24/64) but lies outside it.
    boxes = torch.tensor([[0, 0, 3, 8]], dtype=torch.float32)
    matched = atss_assign(boxes, ANCHORS, LEVELS, topk=2)
    assert matched[3] == -1
    assert matched[0] == 0  # centre (2, 2): inside


def test_an_anchor_claimed_by_two_boxes_goes_to_the_higher_iou() -> None:
    # Both boxes contain anchor 3's centre (4, 4); IoU with [0,0,8,8] is 1, with [2,2,7,7] 25/64.
    boxes = torch.tensor([[2, 2, 7, 7], [0, 0, 8, 8]], dtype=torch.float32)
    assert atss_assign(boxes, ANCHORS, LEVELS, topk=2)[3] == 1


def test_no_boxes_means_all_negative_and_bad_level_sizes_are_an_error() -> None:
    assert atss_assign(torch.zeros(0, 4), ANCHORS, LEVELS).tolist() == [-1] * 5
    with pytest.raises(ValueError, match="sum to 4"):
        atss_assign(torch.zeros(0, 4), ANCHORS, [2, 2])


@pytest.mark.parametrize("assigner", ["iou", "atss"])
def test_retinanet_trains_on_the_configured_assignment(assigner: str) -> None:
    torch.manual_seed(0)
    box = torch.tensor([[41.0, 42.0, 49.0, 49.0]])  # 8 x 7 px: IoU < 0.25 with every 16-25 px anchor
    cfg = DetectorConfig(
        pretrained="none", fpn_channels=16, min_size=96, max_size=96, levels=[2, 3, 4], assigner=assigner
    )
    model = build_detector(cfg, num_classes=1, load_pretrained=False)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = model.head.compute_loss

    def spy(targets, head_outputs, anchors, matched_idxs):  # noqa: ANN001, ANN202
        seen.append((anchors[0], matched_idxs[0]))
        return real(targets, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = spy
    model.train()
    losses = model([torch.rand(3, 96, 96)], [{"boxes": box, "labels": torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())
    anchors, matched = seen[0]
    if assigner == "atss":
        assert model.anchor_generator.level_sizes == [24 * 24 * 9, 12 * 12 * 9, 6 * 6 * 9]
        assert torch.equal(matched, atss_assign(box, anchors, model.anchor_generator.level_sizes, 9))
        assert int((matched >= 0).sum()) >= 3
    else:  # torchvision's Matcher: below fg 0.5 every positive is a best-IoU tie (the low-quality fallback)
        ious = box_iou(box, anchors[matched >= 0])
        assert torch.allclose(ious, box_iou(box, anchors).max())
