"""Anchors fitted to the training boxes: torchvision's default rule, k-means with 1 − IoU, evolution, BPR.

Every computation here is *shape-only*: a box or anchor is a ``(w, h)`` pair in pixels at the detector's
input scale, and the IoU of two shapes is the IoU of the two boxes placed on a common centre
(``torchvision.ops.box_iou`` on boxes centred at 0). Shape-only best-possible recall (BPR) ignores the
stride grid: a real anchor sits on a cell centre, up to half a stride away from the object's centre, so its
IoU can only be lower. BPR here is therefore an upper bound on what the detector's matcher can reach.

Tuning (:func:`tune_anchors`), for ``k = len(levels) × anchors_per_level`` anchors:

1. k-means on the box shapes with distance 1 − IoU, k-means++ initialisation from a seeded generator,
   cluster centres updated to the per-cluster median ``(w, h)`` (robust to a few huge boxes);
2. assignment to FPN levels by size (:func:`assign_levels`): sorted by sqrt(w·h), ``anchors_per_level``
   per level, the smallest on the finest level; each side is clamped to at least half the level's stride;
3. hill-climbing evolution after YOLOv5's autoanchor (:func:`evolve_anchors`): multiplicative Gaussian
   mutations of a few coordinates, each candidate re-assigned and clamped as in step 2, kept only if the
   fitness rises.

The fitness (:func:`anchor_fitness`) is YOLOv5's with IoU in place of its side-ratio metric: the mean over
all boxes of the best anchor IoU, counting a box only when that IoU reaches the detector's positive
threshold (``detector.fg_iou_thresh``). A box under the threshold adds nothing, so the fitness rewards
BPR first and then how well the matched boxes fit; plain mean best IoU would also reward raising a box from
0.2 to 0.4, which gives the detector no positive anchor for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou

from sod.config import COCO_MEDIUM_AREA, COCO_SMALL_AREA

# torchvision RetinaNet (_default_anchorgen): base size 4 × stride, three octave scales, h/w ratios.
DEFAULT_BASE_PER_STRIDE = 4
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Bounds of a mutation factor (YOLOv5 autoanchor's).
_MUTATE_MIN, _MUTATE_MAX = 0.3, 3.0
# Anchors are stored with this many decimals; tuning rounds every candidate so the written set is the
# set whose fitness was measured.
_DECIMALS = 2


# --------------------------------------------------------------------------------------- geometry
def input_scale(width: int, height: int, min_size: int, max_size: int) -> tuple[float, float]:
    """The factors by which torchvision's ``GeneralizedRCNNTransform`` (eval mode) scales an image's boxes.

    It picks ``scale = min(min_size / short_side, max_size / long_side)``, resizes the image to
    ``floor(side × scale)`` pixels, and scales boxes by ``new_side / old_side`` in float32 per axis
    (``resize_boxes``), so the box factor differs slightly from ``scale``.

    Args:
        width, height: the image size in pixels, as in the COCO ``images`` record.
        min_size, max_size: ``detector.min_size`` and ``detector.max_size``.

    Returns:
        ``(ratio_w, ratio_h)``: multiply box x-coordinates/widths by ``ratio_w``, y/heights by ``ratio_h``.
    """
    scale = min(min_size / min(width, height), max_size / max(width, height))
    new_w, new_h = math.floor(width * scale), math.floor(height * scale)
    ratio_w = np.float32(new_w) / np.float32(width)
    ratio_h = np.float32(new_h) / np.float32(height)
    return float(ratio_w), float(ratio_h)


def _centred_xyxy(wh: np.ndarray) -> torch.Tensor:
    """``(w, h)`` pairs ``[N, 2]`` → boxes_xyxy ``Tensor[N, 4]`` (float64) centred at the origin."""
    t = torch.as_tensor(np.asarray(wh, dtype=np.float64).reshape(-1, 2))
    return torch.cat([-t / 2, t / 2], dim=1)


def shape_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> np.ndarray:
    """IoU of every box shape with every anchor shape, both centred at the same point.

    Args:
        boxes_wh: ``[N, 2]`` widths and heights in pixels.
        anchors_wh: ``[K, 2]`` widths and heights in pixels.

    Returns:
        ``[N, K]`` float64 IoUs: ``min(w)·min(h) / (w1·h1 + w2·h2 − min(w)·min(h))``.
    """
    return box_iou(_centred_xyxy(boxes_wh), _centred_xyxy(anchors_wh)).numpy()


def best_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> np.ndarray:
    """``[N]`` float64: each box's highest shape-only IoU over all anchors ``[K, 2]``."""
    return shape_iou(boxes_wh, anchors_wh).max(axis=1)


# ------------------------------------------------------------------------------------------ default
def default_anchor_sizes(levels: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """torchvision RetinaNet's anchor sizes per level: ``(x, int(x·2^(1/3)), int(x·2^(2/3)))``, x = 4 × stride.

    Args:
        levels: FPN levels as log2(stride), e.g. ``[3, 4, 5]`` for strides 8/16/32.
    """
    bases = [DEFAULT_BASE_PER_STRIDE * 2**lv for lv in levels]
    return tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in bases)


def default_anchors_wh(levels: Sequence[int]) -> list[np.ndarray]:
    """torchvision's default RetinaNet anchors as ``(w, h)`` per level, exactly as ``AnchorGenerator`` makes them.

    ``AnchorGenerator`` takes aspect ratio = h / w and rounds each corner of the centred box, so a
    32 px anchor of ratio 0.5 is 46 × 22 px, not 45.25 × 22.63.

    Args:
        levels: FPN levels as log2(stride).

    Returns:
        One float64 array ``[9, 2]`` per level, in AnchorGenerator's order (ratio-major, then scale).
    """
    sizes = default_anchor_sizes(levels)
    generator = AnchorGenerator(sizes, (DEFAULT_ASPECT_RATIOS,) * len(sizes))
    return [
        torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], dim=1).double().numpy()
        for cell in generator.cell_anchors
    ]


# ------------------------------------------------------------------------------------------ metrics
def anchor_metrics(
    boxes_wh: np.ndarray, areas: np.ndarray, anchors_wh: np.ndarray, fg_iou_thresh: float
) -> dict[str, float | None]:
    """Shape-only best-possible recall and mean best IoU, overall and per COCO size bucket.

    Args:
        boxes_wh: ``[N, 2]`` GT box shapes at the detector's input scale, pixels.
        areas: ``[N]`` the annotations' ``area`` at the ORIGINAL image scale (COCO buckets: small < 32²,
            medium < 96², large otherwise).
        anchors_wh: ``[K, 2]`` all anchors of all levels.
        fg_iou_thresh: a box counts as recallable when its best anchor IoU is at least this.

    Returns:
        ``bpr``, ``mean_best_iou``, ``bpr_small``, ``bpr_medium``, ``bpr_large`` (fractions in 0–1, rounded
        to 6 decimals; a bucket with no boxes gives None). BPR is an upper bound: it ignores the stride grid.
    """
    best = best_iou(boxes_wh, anchors_wh)
    hit = best >= fg_iou_thresh
    areas = np.asarray(areas, dtype=np.float64)
    buckets = {
        "small": areas < COCO_SMALL_AREA,
        "medium": (areas >= COCO_SMALL_AREA) & (areas < COCO_MEDIUM_AREA),
        "large": areas >= COCO_MEDIUM_AREA,
    }
    out: dict[str, float | None] = {
        "bpr": round(float(hit.mean()), 6),
        "mean_best_iou": round(float(best.mean()), 6),
    }
    for name, mask in buckets.items():
        out[f"bpr_{name}"] = round(float(hit[mask].mean()), 6) if mask.any() else None
    return out


def anchor_fitness(boxes_wh: np.ndarray, anchors_wh: np.ndarray, fg_iou_thresh: float) -> float:
    """YOLOv5's anchor fitness with IoU: mean over boxes of best IoU × [best IoU ≥ fg_iou_thresh].

    Args:
        boxes_wh: ``[N, 2]`` box shapes; anchors_wh: ``[K, 2]`` anchor shapes (pixels).
        fg_iou_thresh: the detector's positive IoU threshold.
    """
    best = best_iou(boxes_wh, anchors_wh)
    return float((best * (best >= fg_iou_thresh)).mean())


# --------------------------------------------------------------------------------------- assignment
def assign_levels(anchors_wh: np.ndarray, levels: Sequence[int], anchors_per_level: int) -> list[np.ndarray]:
    """Split anchors over FPN levels by size and clamp each side to at least half the level's stride.

    Anchors are sorted by sqrt(w·h) (ties by w, then h); the first ``anchors_per_level`` go to the finest
    level, the next to the one above, and so on. The clamp comes after the split: a side below
    ``stride / 2`` is raised to it, because an anchor much smaller than its level's cell would be matched
    from a cell centre up to half a stride away and could never reach a useful IoU.

    Args:
        anchors_wh: ``[len(levels) × anchors_per_level, 2]`` anchor shapes in pixels.
        levels: FPN levels as log2(stride), increasing.
        anchors_per_level: anchors on every level.

    Returns:
        One float64 array ``[anchors_per_level, 2]`` per level, each sorted by sqrt(w·h).
    """
    anchors_wh = np.asarray(anchors_wh, dtype=np.float64).reshape(-1, 2)
    if len(anchors_wh) != len(levels) * anchors_per_level:
        raise ValueError(f"{len(anchors_wh)} anchors do not fill {len(levels)} levels × {anchors_per_level}")
    order = np.lexsort((anchors_wh[:, 1], anchors_wh[:, 0], anchors_wh.prod(axis=1)))
    ranked = anchors_wh[order]
    per_level = []
    for i, lv in enumerate(levels):
        chunk = np.maximum(ranked[i * anchors_per_level : (i + 1) * anchors_per_level], 2**lv / 2)
        per_level.append(chunk[np.lexsort((chunk[:, 1], chunk[:, 0], chunk.prod(axis=1)))])
    return per_level


def _constrain(anchors_wh: np.ndarray, levels: Sequence[int], anchors_per_level: int) -> np.ndarray:
    """Round, assign to levels and clamp: the flat ``[K, 2]`` set that would be written."""
    rounded = np.round(np.asarray(anchors_wh, dtype=np.float64), _DECIMALS)
    return np.concatenate(assign_levels(rounded, levels, anchors_per_level))


# ---------------------------------------------------------------------------------------- k-means
def kmeans_iou(boxes_wh: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means on box shapes with distance 1 − IoU (shape-only), k-means++ initialisation.

    Centres move to the per-cluster median ``(w, h)``; a cluster left empty takes the box farthest from
    its own centre. Stops when no assignment changes, or after ``iters`` updates.

    Args:
        boxes_wh: ``[N, 2]`` box shapes in pixels with at least ``k`` distinct rows.
        k: number of clusters.
        iters: most centre updates.
        rng: the only source of randomness (the seeding draws).

    Returns:
        ``[k, 2]`` float64 centres, sorted by sqrt(w·h).
    """
    boxes_wh = np.asarray(boxes_wh, dtype=np.float64)
    n = len(boxes_wh)
    if len(np.unique(boxes_wh, axis=0)) < k:
        raise ValueError(f"k-means needs at least k={k} distinct box shapes")
    centres = [boxes_wh[rng.integers(n)]]
    nearest = 1 - shape_iou(boxes_wh, centres[0][None]).ravel()
    for _ in range(1, k):
        # k-means++: the next centre is drawn with probability ∝ squared distance to the chosen ones.
        weights = nearest**2
        centres.append(boxes_wh[rng.choice(n, p=weights / weights.sum())])
        nearest = np.minimum(nearest, 1 - shape_iou(boxes_wh, centres[-1][None]).ravel())
    centres_wh = np.stack(centres)
    assign = np.full(n, -1)
    for _ in range(iters):
        dist = 1 - shape_iou(boxes_wh, centres_wh)
        new_assign = dist.argmin(axis=1)
        if np.array_equal(new_assign, assign):
            break
        assign = new_assign
        own = dist[np.arange(n), assign]
        for j in range(k):
            members = boxes_wh[assign == j]
            if len(members):
                centres_wh[j] = np.median(members, axis=0)
            else:
                far = int(own.argmax())
                centres_wh[j] = boxes_wh[far]
                own[far] = -1.0  # a second empty cluster takes the next-farthest box
    return centres_wh[np.lexsort((centres_wh[:, 1], centres_wh[:, 0], centres_wh.prod(axis=1)))]


def _fill_few_shapes(boxes_wh: np.ndarray, k: int, levels: Sequence[int]) -> np.ndarray:
    """``k`` anchors when the boxes have fewer than ``k`` distinct shapes (k-means cannot make k clusters).

    Every distinct box shape becomes an anchor; the remaining anchors are squares picked farthest-first
    (lowest best IoU with the anchors so far, ties to the smaller) from ``k`` squares spaced geometrically
    over torchvision's default size range of the levels (4 × the finest stride to 4·2^(2/3) × the coarsest).
    """
    shapes = np.unique(np.asarray(boxes_wh, dtype=np.float64), axis=0)
    sizes = default_anchor_sizes(levels)
    pool = np.repeat(np.geomspace(sizes[0][0], sizes[-1][-1], k)[:, None], 2, axis=1)
    chosen = list(shapes)
    while len(chosen) < k:
        chosen.append(pool[int(best_iou(pool, np.stack(chosen)).argmin())])
    return np.stack(chosen)


# -------------------------------------------------------------------------------------- evolution
def evolve_anchors(
    boxes_wh: np.ndarray,
    anchors_wh: np.ndarray,
    levels: Sequence[int],
    anchors_per_level: int,
    fg_iou_thresh: float,
    generations: int,
    sigma: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[float]]:
    """Hill-climb the anchor set with multiplicative Gaussian mutations (after YOLOv5 autoanchor), IoU fitness.

    Each generation multiplies each of the 2K coordinates, with probability 1/K (two on average, at least
    one), by ``1 + N(0, 1)·sigma`` clipped to [0.3, 3]; the candidate is rounded, re-assigned to levels and
    clamped (:func:`assign_levels`) and replaces the current set only if its :func:`anchor_fitness` is
    strictly higher. The fitness never goes down. YOLOv5 mutates each coordinate with probability 0.9:
    on the embedded training set (3,324 boxes, k = 9) that found no improvement over k-means in 3 × 1,000
    generations, while a few coordinates at a time found 12–18; moving every anchor at once rarely helps
    a set that k-means has already fitted.

    Args:
        boxes_wh: ``[N, 2]`` box shapes in pixels; anchors_wh: ``[K, 2]`` the starting anchors.
        levels, anchors_per_level: the level layout (K = len(levels) × anchors_per_level).
        fg_iou_thresh: threshold of :func:`anchor_fitness`.
        generations: mutation rounds (0 returns the constrained start).
        sigma: relative size of a mutation.
        rng: the only source of randomness.

    Returns:
        The best ``[K, 2]`` set (level-ordered as :func:`assign_levels` returns it, flattened) and the
        fitness after each generation (``generations + 1`` values, the first for the start).
    """
    current = _constrain(anchors_wh, levels, anchors_per_level)
    fitness = anchor_fitness(boxes_wh, current, fg_iou_thresh)
    history = [fitness]
    for _ in range(generations):
        factor = np.ones_like(current)
        while (factor == 1).all():  # a generation with no mutation at all would be wasted
            mutate = rng.random(current.shape) < 1 / len(current)
            factor = (mutate * rng.standard_normal(current.shape) * sigma + 1).clip(_MUTATE_MIN, _MUTATE_MAX)
        candidate = _constrain(current * factor, levels, anchors_per_level)
        cand_fitness = anchor_fitness(boxes_wh, candidate, fg_iou_thresh)
        if cand_fitness > fitness:
            current, fitness = candidate, cand_fitness
        history.append(fitness)
    return current, history


# ------------------------------------------------------------------------------------------- tuning
def tune_anchors(
    boxes_wh: np.ndarray,
    levels: Sequence[int],
    anchors_per_level: int,
    fg_iou_thresh: float,
    kmeans_iters: int,
    evolve_generations: int,
    evolve_sigma: float,
    seed: int,
) -> list[np.ndarray]:
    """Fit ``len(levels) × anchors_per_level`` anchors to the box shapes: k-means, level assignment, evolution.

    With fewer distinct box shapes than anchors, k-means is skipped: each shape becomes an anchor and
    the rest are squares over the default size range (see :func:`_fill_few_shapes`); evolution still runs.

    Args:
        boxes_wh: ``[N, 2]`` GT box shapes at the detector's input scale, pixels (N ≥ 1).
        levels: FPN levels as log2(stride), increasing.
        anchors_per_level: anchors on every level.
        fg_iou_thresh: the detector's positive IoU threshold (the fitness counts boxes reaching it).
        kmeans_iters, evolve_generations, evolve_sigma: see ``AnchorsConfig``.
        seed: seeds k-means++ and the mutations; same inputs give the same anchors.

    Returns:
        One float64 array ``[anchors_per_level, 2]`` of ``(w, h)`` per level, finest level first, each
        side ≥ half the level's stride, values rounded to 2 decimals.
    """
    boxes_wh = np.asarray(boxes_wh, dtype=np.float64).reshape(-1, 2)
    if len(boxes_wh) == 0:
        raise ValueError("no boxes to fit anchors to")
    k = len(levels) * anchors_per_level
    rng = np.random.default_rng(seed)
    if len(np.unique(boxes_wh, axis=0)) < k:
        start = _fill_few_shapes(boxes_wh, k, levels)
    else:
        start = kmeans_iou(boxes_wh, k, kmeans_iters, rng)
    best, _ = evolve_anchors(
        boxes_wh, start, levels, anchors_per_level, fg_iou_thresh, evolve_generations, evolve_sigma, rng
    )
    # ``best`` is already level-ordered and clamped; splitting it (not re-assigning) keeps the measured set.
    return [best[i * anchors_per_level : (i + 1) * anchors_per_level] for i in range(len(levels))]
