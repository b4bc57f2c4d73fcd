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

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou

from sod.config import COCO_MEDIUM_AREA, COCO_SMALL_AREA
from sod.models.assign import atss_assign

# torchvision RetinaNet (_default_anchorgen): base size 4 × stride, three octave scales, h/w ratios.
DEFAULT_BASE_PER_STRIDE = 4
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Boxes whose original long side is under this many pixels are reported apart (``under_12px``).
TINY_LONG_SIDE = 12
# Bounds of a mutation factor (YOLOv5 autoanchor's).
_MUTATE_MIN, _MUTATE_MAX = 0.3, 3.0
# GeneralizedRCNNTransform pads every batch to a multiple of this (its ``size_divisible``).
SIZE_DIVISIBLE = 32
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
    new_w, new_h = resized_size(width, height, min_size, max_size)
    ratio_w = np.float32(new_w) / np.float32(width)
    ratio_h = np.float32(new_h) / np.float32(height)
    return float(ratio_w), float(ratio_h)


def resized_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(new_w, new_h)``: the image size after torchvision's ``GeneralizedRCNNTransform`` resize (eval mode).

    ``scale = min(min_size / short_side, max_size / long_side)``, each side floored: see :func:`input_scale`.
    """
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return math.floor(width * scale), math.floor(height * scale)


def padded_input_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(W, H)`` of the network input an image becomes: resized, then padded up to a multiple of 32.

    ``GeneralizedRCNNTransform.batch_images`` pads every batch to a multiple of ``size_divisible`` (32) at the
    bottom and right; the anchor grid spans the padded size. (A batch pads to its largest image; this is the
    image's own padded size, which is what a batch of same-sized images, or one image, gets.)
    """
    new_w, new_h = resized_size(width, height, min_size, max_size)
    return (-(-new_w // SIZE_DIVISIBLE) * SIZE_DIVISIBLE, -(-new_h // SIZE_DIVISIBLE) * SIZE_DIVISIBLE)


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


# --------------------------------------------------------------------------------------- the stride grid
@dataclass(frozen=True)
class GridBoxes:
    """GT boxes where the detector sees them: at its input scale, in the image they belong to.

    Attributes:
        boxes_xyxy: ``[N, 4]`` float64 x1, y1, x2, y2 in the resized (unpadded) network input, pixels.
        input_wh: ``[N, 2]`` int64 ``(W, H)`` of each box's padded network input (:func:`padded_input_size`);
            it bounds the anchor grid.
        image_index: ``[N]`` int64, which image each box is in (boxes of one image compete in the matcher).
        areas: ``[N]`` float64 the annotations' ``area`` at the ORIGINAL scale (COCO size buckets).
        long_sides: ``[N]`` float64 the longer bbox side at the ORIGINAL scale, pixels.
    """

    boxes_xyxy: np.ndarray
    input_wh: np.ndarray
    image_index: np.ndarray
    areas: np.ndarray
    long_sides: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes_xyxy)

    @property
    def wh(self) -> np.ndarray:
        """``[N, 2]`` float64 box widths and heights at input scale."""
        return self.boxes_xyxy[:, 2:] - self.boxes_xyxy[:, :2]

    def subset(self, index: np.ndarray) -> GridBoxes:
        """The boxes at ``index`` (an int or bool array), fields kept aligned."""
        return GridBoxes(*(getattr(self, f.name)[index] for f in fields(self)))

    def buckets(self) -> dict[str, np.ndarray]:
        """Bool masks ``[N]``: COCO ``small``/``medium``/``large`` by original area, and ``under_12px``
        (original long side < 12 px: the tiny objects that even the stride-8 grid hardly resolves)."""
        areas = self.areas
        return {
            "small": areas < COCO_SMALL_AREA,
            "medium": (areas >= COCO_SMALL_AREA) & (areas < COCO_MEDIUM_AREA),
            "large": areas >= COCO_MEDIUM_AREA,
            "under_12px": self.long_sides < TINY_LONG_SIDE,
        }


def _grid_len(size: np.ndarray, stride: int) -> np.ndarray:
    """Anchor positions along an axis: the level's feature-map length ``ceil(size / stride)`` (stride-2 convs
    with padding 1 halve a length rounding up; the padded input is a multiple of 32)."""
    return -(-np.asarray(size, dtype=np.int64) // stride)


def _axis_overlap(lo: np.ndarray, hi: np.ndarray, centre: np.ndarray, half: float) -> np.ndarray:
    """Overlap length of intervals ``[lo, hi]`` and ``[centre - half, centre + half]`` (0 when apart),
    computed as ``torchvision.ops.box_iou`` does: ``min(right) - max(left)`` clamped at 0."""
    return np.clip(np.minimum(hi, centre + half) - np.maximum(lo, centre - half), 0, None)


def grid_positives(
    boxes: GridBoxes,
    strides: Sequence[int],
    anchors_wh: Sequence[np.ndarray],
    iou_thresh: float,
    max_cells: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray]:
    """Each box's best IoU with any anchor on the stride grids, and how many anchors reach ``iou_thresh``.

    Anchor ``(w_a, h_a)`` of a level with stride ``s`` sits at every ``(j·s, i·s)``, ``0 ≤ j < ceil(W / s)``,
    ``0 ≤ i < ceil(H / s)`` (torchvision's ``AnchorGenerator`` and :class:`sod.models.detector.PyramidAnchorGenerator`:
    centres on multiples of the stride, from the padded input's top-left corner). Each box is scored alone
    (boxes of one image do not compete here; :func:`match_on_grid` does that), and only against the anchors
    that could reach the threshold, so thousands of boxes take milliseconds:

    * best IoU: for a fixed anchor shape the IoU only falls as the centre moves away in x or in y, so the
      best position is the grid point nearest the box centre (clamped into the grid);
    * count: IoU ≥ t needs an intersection ``I ≥ t·(A_box + A_anchor) / (1 + t)``, and ``I ≤ i_x · min(h, h_a)``,
      which bounds the x-offset (likewise y): the window of grid points inside those bounds is enumerated
      and scored exactly.

    Args:
        boxes: the GT boxes (``boxes_xyxy`` and ``input_wh`` are used).
        strides: pixel stride of each level.
        anchors_wh: per level ``[A_l, 2]`` anchor (w, h) in pixels, centred on the grid point.
        iou_thresh: the IoU an anchor needs to count (the matcher's ``fg_iou_thresh``).
        max_cells: cap on the ``boxes × window`` array of one pass (memory), boxes are chunked to it.

    Returns:
        ``best`` ``[N]`` float64 best IoU, and ``count`` ``[N]`` int64 anchors with IoU ≥ ``iou_thresh``.
    """
    xyxy = np.asarray(boxes.boxes_xyxy, dtype=np.float64)
    x1, y1, x2, y2 = xyxy.T
    w, h = x2 - x1, y2 - y1
    cx, cy, area = (x1 + x2) / 2, (y1 + y2) / 2, w * h
    best = np.zeros(len(xyxy))
    count = np.zeros(len(xyxy), dtype=np.int64)
    t = float(iou_thresh)
    for stride, level in zip(strides, anchors_wh, strict=True):
        s = float(stride)
        gw, gh = _grid_len(boxes.input_wh[:, 0], stride), _grid_len(boxes.input_wh[:, 1], stride)
        for wa, ha in np.asarray(level, dtype=np.float64).reshape(-1, 2):
            # Best: nearest grid point per axis, clamped into the grid.
            jn = np.clip(np.rint(cx / s), 0, gw - 1)
            inn = np.clip(np.rint(cy / s), 0, gh - 1)
            inter = _axis_overlap(x1, x2, jn * s, wa / 2) * _axis_overlap(y1, y2, inn * s, ha / 2)
            best = np.maximum(best, inter / (area + wa * ha - inter))
            # Count: the window of grid points that can reach t (a superset; each is then scored exactly).
            need = t * (area + wa * ha) / (1 + t)
            mw, mh = np.minimum(w, wa), np.minimum(h, ha)
            reach = mw * mh >= need  # the shape alone allows IoU ≥ t
            with np.errstate(divide="ignore", invalid="ignore"):
                dx = (w + wa) / 2 - need / mh + 1e-9 * s  # slack: floating error must not shrink the window
                dy = (h + ha) / 2 - need / mw + 1e-9 * s
            j0 = np.maximum(np.ceil((cx - dx) / s), 0)
            j1 = np.minimum(np.floor((cx + dx) / s), gw - 1)
            i0 = np.maximum(np.ceil((cy - dy) / s), 0)
            i1 = np.minimum(np.floor((cy + dy) / s), gh - 1)
            idx = np.flatnonzero(reach & (j1 >= j0) & (i1 >= i0))
            if len(idx) == 0:
                continue
            nx = int((j1[idx] - j0[idx]).max()) + 1
            ny = int((i1[idx] - i0[idx]).max()) + 1
            step = max(1, max_cells // (nx * ny))
            kx, ky = np.arange(nx), np.arange(ny)
            for c in range(0, len(idx), step):
                b = idx[c : c + step]
                jj = j0[b, None] + kx  # [B, nx] grid columns
                ii = i0[b, None] + ky  # [B, ny] grid rows
                ix = _axis_overlap(x1[b, None], x2[b, None], jj * s, wa / 2) * (jj <= j1[b, None])
                iy = _axis_overlap(y1[b, None], y2[b, None], ii * s, ha / 2) * (ii <= i1[b, None])
                inter = ix[:, :, None] * iy[:, None, :]  # [B, nx, ny]
                iou = inter / (area[b, None, None] + wa * ha - inter)
                count[b] += ((iou >= t) & (inter > 0)).sum(axis=(1, 2))
    return best, count


def _cell_anchors_xyxy(anchors_wh: np.ndarray) -> torch.Tensor:
    """``[A, 2]`` (w, h) → ``Tensor[A, 4]`` float32 xyxy centred at 0, as ``PyramidAnchorGenerator.from_wh``."""
    half = torch.as_tensor(np.asarray(anchors_wh, dtype=np.float64), dtype=torch.float32).reshape(-1, 2) / 2
    return torch.cat([-half, half], dim=1)


def _near_cells(boxes_xyxy: np.ndarray, stride: int, reach: float, gw: int, gh: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid points ``(i, j)`` within ``reach`` px of any box (on each axis): ``ii, jj`` int arrays, row-major.

    Marks each box's rectangle of grid points in a difference array, so it costs O(boxes + grid), no loop.
    """
    x1, y1, x2, y2 = boxes_xyxy.T
    j0 = np.clip(np.floor((x1 - reach) / stride), 0, gw).astype(np.int64)
    j1 = np.clip(np.ceil((x2 + reach) / stride) + 1, 0, gw).astype(np.int64)  # exclusive
    i0 = np.clip(np.floor((y1 - reach) / stride), 0, gh).astype(np.int64)
    i1 = np.clip(np.ceil((y2 + reach) / stride) + 1, 0, gh).astype(np.int64)
    diff = np.zeros((gh + 1, gw + 1), dtype=np.int64)
    np.add.at(diff, (i0, j0), 1)
    np.add.at(diff, (i0, j1), -1)
    np.add.at(diff, (i1, j0), -1)
    np.add.at(diff, (i1, j1), 1)
    return np.nonzero(diff.cumsum(axis=0).cumsum(axis=1)[:gh, :gw] > 0)


def match_on_grid(
    boxes: GridBoxes,
    strides: Sequence[int],
    anchors_wh: Sequence[np.ndarray],
    fg_iou_thresh: float,
    assigner: str = "iou",
    atss_topk: int = 9,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the detector's assignment gives each box in training: best grid IoU and positive anchors.

    Per image, the grid anchors that overlap its boxes are built as
    :class:`~sod.models.detector.PyramidAnchorGenerator` builds them (float32 xyxy, centres ``(j·s, i·s)``),
    scored with ``torchvision.ops.box_iou`` and matched by torchvision's own ``Matcher(fg, bg,
    allow_low_quality_matches=True)`` (RetinaNet's; Faster R-CNN's RPN uses the same; ``bg_iou_thresh`` only
    splits the non-positive anchors into negatives and ignored ones, so it is set to fg here): an anchor is positive
    for the box it overlaps most if that IoU ≥ fg, and each box also gets every anchor tied at its highest
    IoU (the low-quality fallback), unless those overlap another box more. Anchors that overlap no box
    would be negatives and change nothing, so they are left out. Images with identical boxes (oversampled
    repeats) are matched once. With ``assigner="atss"`` the positives are :func:`sod.models.assign.atss_assign`'s
    on the same anchors (its candidates, the anchors nearest a box's centre, are always among them), and
    ``matched`` equals ``positives``.

    Args:
        boxes: the GT boxes; those with the same ``image_index`` compete for anchors.
        strides, anchors_wh: per level the stride and the ``[A_l, 2]`` anchor (w, h), pixels.
        fg_iou_thresh: the matcher's positive threshold (``detector.fg_iou_thresh``).
        assigner, atss_topk: ``detector.assigner`` (iou | atss) and ``detector.atss_topk``.

    Returns:
        Per box, ``[N]`` each: ``best`` float64 best IoU over the grid anchors; ``positives`` int64 anchors
        matched to the box at IoU ≥ fg; ``matched`` int64 all anchors matched to it, the fallback included.
    """
    from torchvision.models.detection._utils import Matcher

    matcher = Matcher(fg_iou_thresh, fg_iou_thresh, allow_low_quality_matches=True)
    shapes = [np.asarray(level, dtype=np.float64).reshape(-1, 2) for level in anchors_wh]
    cells = [_cell_anchors_xyxy(level) for level in shapes]
    best = np.zeros(len(boxes))
    positives = np.zeros(len(boxes), dtype=np.int64)
    matched = np.zeros(len(boxes), dtype=np.int64)
    order = np.argsort(boxes.image_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(boxes.image_index[order]) != 0, True])
    done: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for a, b in itertools.pairwise(starts):
        sel = order[a:b]
        xyxy = boxes.boxes_xyxy[sel]
        key = boxes.input_wh[sel[0]].tobytes() + xyxy.tobytes()
        if key not in done:
            in_w, in_h = (int(v) for v in boxes.input_wh[sel[0]])
            anchors = []
            for stride, level, cell in zip(strides, shapes, cells, strict=True):
                gw, gh = int(_grid_len(in_w, stride)), int(_grid_len(in_h, stride))
                ii, jj = _near_cells(xyxy, stride, float(level.max(initial=0.0)) / 2, gw, gh)
                shifts = torch.as_tensor(np.stack([jj, ii, jj, ii], axis=1) * stride, dtype=torch.float32)
                anchors.append((shifts[:, None, :] + cell[None]).reshape(-1, 4))
            gt = torch.as_tensor(xyxy, dtype=torch.float32)  # the transform's float32 boxes
            iou = box_iou(gt, torch.cat(anchors))  # [G, C]
            if assigner == "atss":
                match = atss_assign(gt, torch.cat(anchors), [len(a) for a in anchors], atss_topk)
                fg = quality = match >= 0
            else:
                match = matcher(iou)  # [C]: box index, or -1 (not positive)
                fg = match >= 0
                quality = fg & (iou.max(dim=0).values >= fg_iou_thresh)
            done[key] = (
                iou.max(dim=1).values.double().numpy(),
                torch.bincount(match[quality], minlength=len(sel)).numpy(),
                torch.bincount(match[fg], minlength=len(sel)).numpy(),
            )
        best[sel], positives[sel], matched[sel] = done[key]
    return best, positives, matched


def grid_metrics(
    boxes: GridBoxes,
    strides: Sequence[int],
    anchors_wh: Sequence[np.ndarray],
    fg_iou_thresh: float,
    assigner: str = "iou",
    atss_topk: int = 9,
) -> dict[str, dict[str, float | None]]:
    """Grid-aware recall and positives per box, overall and per size bucket (:func:`match_on_grid`).

    Returns:
        ``{"bpr_grid": {...}, "positives_per_gt": {...}}``, each keyed ``all``, ``small``, ``medium``,
        ``large``, ``under_12px``: ``bpr_grid`` is the share of boxes with a grid anchor at IoU ≥
        ``fg_iou_thresh`` (a box without one is learnt only from the matcher's low-quality fallback);
        ``positives_per_gt`` the mean number of anchors the assignment (``assigner``: torchvision's matcher at
        IoU ≥ fg, or ATSS) makes positive for a box. Rounded to 6
        (share) and 4 (mean) decimals; None for an empty bucket.
    """
    best, positives, matched = match_on_grid(boxes, strides, anchors_wh, fg_iou_thresh, assigner, atss_topk)
    hit = best >= fg_iou_thresh
    masks = {"all": np.ones(len(boxes), dtype=bool), **boxes.buckets()}

    def per_bucket(values: np.ndarray, decimals: int) -> dict[str, float | None]:
        return {k: round(float(values[m].mean()), decimals) if m.any() else None for k, m in masks.items()}

    return {
        "bpr_grid": per_bucket(hit, 6),
        "positives_per_gt": per_bucket(positives, 4),
        "matched_per_gt": per_bucket(matched, 4),
    }


def grid_fitness(counts: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> float:
    """The tuning objective: per size group, the mean over its boxes of ``min(count / target, 1)``; then the
    mean over the groups.

    Averaging per group first keeps the many small boxes from buying their positives with the medium and
    large boxes' (on the embedded set 78 % of the boxes are small: a plain mean over boxes moved every
    anchor to them and left medium boxes 2 positives instead of torchvision's 30).

    Args:
        counts: ``[N]`` anchors at IoU ≥ fg per box on the grid (:func:`grid_positives`).
        targets: ``[N]`` positives wanted per box (≥ 1): ``anchors.target_positives``, raised to what
            torchvision's anchors give the box, so that no box is worse off than with the default anchors.
        groups: ``[N]`` int group of each box (COCO size bucket).
    """
    score = np.minimum(counts / targets, 1.0)
    present = np.unique(groups)
    return float(np.mean([score[groups == g].mean() for g in present]))


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
    anchors_wh: np.ndarray,
    levels: Sequence[int],
    anchors_per_level: int,
    fitness: Callable[[np.ndarray], float],
    generations: int,
    sigma: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[float]]:
    """Hill-climb the anchor set with multiplicative Gaussian mutations (after YOLOv5 autoanchor).

    Each generation multiplies each of the 2K coordinates, with probability 1/K (two on average, at least
    one), by ``1 + N(0, 1)·sigma`` clipped to [0.3, 3]; the candidate is rounded, re-assigned to levels and
    clamped (:func:`assign_levels`) and replaces the current set only if its ``fitness`` is strictly
    higher. The fitness never goes down. YOLOv5 mutates each coordinate with probability 0.9: on the
    embedded training set (3,324 boxes, k = 9) that found no improvement over k-means in 3 × 1,000
    generations, while a few coordinates at a time found 12–18; moving every anchor at once rarely helps
    a set that k-means has already fitted.

    Args:
        anchors_wh: ``[K, 2]`` the starting anchors (pixels).
        levels, anchors_per_level: the level layout (K = len(levels) × anchors_per_level).
        fitness: scores a flat ``[K, 2]`` level-ordered set (higher is better).
        generations: mutation rounds (0 returns the constrained start).
        sigma: relative size of a mutation.
        rng: the only source of randomness.

    Returns:
        The best ``[K, 2]`` set (level-ordered as :func:`assign_levels` returns it, flattened) and the
        fitness after each generation (``generations + 1`` values, the first for the start).
    """
    current = _constrain(anchors_wh, levels, anchors_per_level)
    score = fitness(current)
    history = [score]
    for _ in range(generations):
        factor = np.ones_like(current)
        while (factor == 1).all():  # a generation with no mutation at all would be wasted
            mutate = rng.random(current.shape) < 1 / len(current)
            factor = (mutate * rng.standard_normal(current.shape) * sigma + 1).clip(_MUTATE_MIN, _MUTATE_MAX)
        candidate = _constrain(current * factor, levels, anchors_per_level)
        cand_score = fitness(candidate)
        if cand_score > score:
            current, score = candidate, cand_score
        history.append(score)
    return current, history


# ------------------------------------------------------------------------------------------- tuning
def tune_anchors(
    boxes: GridBoxes,
    levels: Sequence[int],
    anchors_per_level: int,
    fg_iou_thresh: float,
    kmeans_iters: int,
    evolve_generations: int,
    evolve_sigma: float,
    seed: int,
    target_positives: int = 3,
    fit_boxes: int = 4000,
) -> list[np.ndarray]:
    """Fit ``len(levels) × anchors_per_level`` anchors: k-means on shapes, then evolution on the stride grid.

    k-means (1 − IoU on shapes) gives the start; with fewer distinct box shapes than anchors it is skipped:
    each shape becomes an anchor and the rest are squares over the default size range (see
    :func:`_fill_few_shapes`). The evolution then maximises :func:`grid_fitness` on the grid anchors
    (:func:`grid_positives`): every box should get ``target_positives`` anchors at IoU ≥ ``fg_iou_thresh``,
    and at least as many as torchvision's default anchors for these levels give it.

    Args:
        boxes: the GT boxes at the detector's input scale (N ≥ 1).
        levels: FPN levels as log2(stride), increasing.
        anchors_per_level: anchors on every level.
        fg_iou_thresh: the detector's positive IoU threshold.
        kmeans_iters, evolve_generations, evolve_sigma, target_positives, fit_boxes: see ``AnchorsConfig``.
        seed: seeds k-means++, the box sample and the mutations; same inputs give the same anchors.

    Returns:
        One float64 array ``[anchors_per_level, 2]`` of ``(w, h)`` per level, finest level first, each
        side ≥ half the level's stride, values rounded to 2 decimals.
    """
    if len(boxes) == 0:
        raise ValueError("no boxes to fit anchors to")
    boxes_wh = boxes.wh
    k = len(levels) * anchors_per_level
    strides = [2**lv for lv in levels]
    rng = np.random.default_rng(seed)
    if len(np.unique(boxes_wh, axis=0)) < k:
        start = _fill_few_shapes(boxes_wh, k, levels)
    else:
        start = kmeans_iou(boxes_wh, k, kmeans_iters, rng)
    # The fitness runs every generation: a fixed random sample keeps it to milliseconds on large sets.
    sample = boxes if len(boxes) <= fit_boxes else boxes.subset(np.sort(rng.choice(len(boxes), fit_boxes, False)))
    default = default_anchors_wh(levels)
    _, default_counts = grid_positives(sample, strides, default, fg_iou_thresh)
    targets = np.maximum(default_counts, target_positives)
    sizes = sample.buckets()
    groups = np.select([sizes["small"], sizes["medium"]], [0, 1], 2)

    def fitness(flat: np.ndarray) -> float:
        per_level = [flat[i * anchors_per_level : (i + 1) * anchors_per_level] for i in range(len(levels))]
        return grid_fitness(grid_positives(sample, strides, per_level, fg_iou_thresh)[1], targets, groups)

    if anchors_per_level == len(default[0]):
        # With torchvision's count per level its anchors are a start too: they already give medium and
        # large boxes their positives, which k-means (pulled to the many small boxes) gives away.
        default_start = np.concatenate(default)
        if fitness(_constrain(default_start, levels, anchors_per_level)) > fitness(
            _constrain(start, levels, anchors_per_level)
        ):
            start = default_start
    best, _ = evolve_anchors(start, levels, anchors_per_level, fitness, evolve_generations, evolve_sigma, rng)
    # ``best`` is already level-ordered and clamped; splitting it (not re-assigning) keeps the measured set.
    return [best[i * anchors_per_level : (i + 1) * anchors_per_level] for i in range(len(levels))]
