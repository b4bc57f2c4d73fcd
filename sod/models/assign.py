"""Which anchors learn which box: ATSS, the adaptive training-sample selection of Zhang et al. (CVPR 2020).

torchvision's RetinaNet makes an anchor positive when its IoU with a box reaches ``fg_iou_thresh``. A box
much smaller than every anchor of its level (a 8 px object against the 16–25 px anchors of stride 4)
reaches that IoU nowhere, and is learnt only from the matcher's best-IoU fallback. ATSS instead picks,
per box and per pyramid level, the ``topk`` anchors whose centres are closest to the box's centre, and
keeps those whose IoU is at least the mean + standard deviation of the candidates' IoUs and whose centre
lies inside the box (a box left with none keeps its best candidate). The threshold adapts to each box's
size, so tiny and large boxes both get positives without a hand-set IoU threshold. An anchor claimed by
two boxes goes to the one with the higher IoU; every other anchor is a negative (no ignore band).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

NEGATIVE = -1


def atss_assign(boxes: Tensor, anchors: Tensor, level_sizes: Sequence[int], topk: int = 9) -> Tensor:
    """ATSS assignment of one image's anchors to its boxes.

    Args:
        boxes: ``Tensor[G, 4]`` ground-truth boxes, xyxy pixels.
        anchors: ``Tensor[N, 4]`` anchors, xyxy pixels, level after level (the order of
            :class:`~sod.models.detector.PyramidAnchorGenerator`'s output).
        level_sizes: anchors per level, summing to ``N``.
        topk: candidates per box and level, nearest by centre distance (ATSS's 9).

    Returns:
        ``Int64Tensor[N]``: for each anchor the index of its box, or ``-1`` (negative); the
        ``matched_idxs`` format of torchvision's ``Matcher`` and RetinaNet heads.
    """
    n = anchors.shape[0]
    if sum(level_sizes) != n:
        raise ValueError(f"level sizes {list(level_sizes)} sum to {sum(level_sizes)}, not to the {n} anchors")
    if boxes.numel() == 0:
        return torch.full((n,), NEGATIVE, dtype=torch.int64, device=anchors.device)
    iou = box_iou(boxes, anchors)  # [G, N]
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    distance = torch.cdist(box_centres, anchor_centres)  # [G, N]
    candidates = []
    start = 0
    for size in level_sizes:
        k = min(topk, size)
        if k > 0:
            nearest = distance[:, start : start + size].topk(k, dim=1, largest=False).indices
            candidates.append(nearest + start)
        start += size
    candidate_idx = torch.cat(candidates, dim=1)  # [G, C]
    candidate_iou = iou.gather(1, candidate_idx)
    # One candidate has no spread; its threshold is its own IoU (std 0), so it stays a candidate.
    spread = candidate_iou.std(dim=1) if candidate_idx.shape[1] > 1 else torch.zeros_like(candidate_iou[:, 0])
    threshold = candidate_iou.mean(dim=1) + spread  # [G]
    centres = anchor_centres[candidate_idx]  # [G, C, 2]
    inside = (centres > boxes[:, None, :2]).all(dim=-1) & (centres < boxes[:, None, 2:]).all(dim=-1)
    # The tolerance keeps tied candidates (std 0) positive despite float32 rounding of their mean.
    positive = (candidate_iou >= threshold[:, None] - 1e-6) & inside
    # mean + std can exceed every candidate (IoUs [a, a, a, 0]); such a box keeps its best candidate, as
    # torchvision's Matcher keeps a box's best anchor (allow_low_quality_matches), so no box goes unlearnt.
    best_candidate = candidate_iou.argmax(dim=1)
    orphan = ~positive.any(dim=1) & (candidate_iou.max(dim=1).values > 0)
    positive[orphan, best_candidate[orphan]] = True
    # IoU of each (box, anchor) pair that is a positive, -1 elsewhere; then each anchor takes its best box.
    claims = torch.full_like(iou, -1.0)
    claims.scatter_(1, candidate_idx, torch.where(positive, candidate_iou, torch.full_like(candidate_iou, -1.0)))
    best_iou, best_box = claims.max(dim=0)
    return torch.where(best_iou >= 0, best_box, torch.full_like(best_box, NEGATIVE))
