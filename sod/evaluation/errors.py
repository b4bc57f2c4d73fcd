"""TIDE error breakdown per COCO size bucket: how much AP at IoU 0.5 each kind of error costs.

TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020) assigns
every false positive and every missed ground-truth (GT) box one error type, then asks an oracle to fix all
errors of one type at a time: the type's weight is ``dAP = AP after fixing that type − AP``. Here AP is
pycocotools' AP at IoU ``t_f`` (0.5, hence ``AP50``; 101-point interpolation, mean over the categories with
GT in the bucket, at most ``max_dets`` detections per image), computed with ``COCOeval`` (``iouThrs =
[t_f]``) once per size bucket, so ``all`` equals ``AP50`` of :class:`~sod.evaluation.coco_eval.CocoEvaluator`.
No reimplementation of AP: the fixes edit the detections (or the GT) and pycocotools scores the result.

Boxes are COCO ``bbox`` ``[x, y, w, h]`` (bbox_xywh) in image pixels, detections in COCO result format
(``{"image_id", "category_id", "bbox", "score"}``, as :meth:`CocoEvaluator.detections` returns them).

**Assigning error types** (once, on pycocotools' matching over all sizes at IoU ``t_f``; crowd GT boxes are
never an error's GT, and a detection pycocotools ignores for landing on a crowd box is no error). A detection
matched to a GT box is a true positive. Every other detection gets the first type that fits, in TIDE's order,
with IoU taken against the image's non-crowd GT boxes (``t_b`` = 0.1 is the background threshold):

1. ``Loc``: the highest IoU with a GT box of **its own** class is in ``[t_b, t_f)`` — right class, box off.
2. ``Cls``: the highest IoU with a GT box of **another** class is ≥ ``t_f`` — right box, wrong class.
3. ``Dupe``: IoU ≥ ``t_f`` with a GT box of its class that a higher-scoring detection already matched.
4. ``Bkg``: IoU < ``t_b`` with every GT box, whatever its class (also every detection on an image without GT).
5. ``Both``: what is left: IoU in ``[t_b, t_f)`` with a GT box of another class — wrong class and box off.

A GT box that no detection matched is ``Miss`` unless a ``Cls`` or ``Loc`` error's fix would claim it (see
below): a missed object is one that no correction of a detection would have found.

**Fixing** one type (the oracle), everything else left as it is:

* ``Cls`` / ``Loc``: the detection takes its GT box's class (Cls) or box (Loc) — here both its ``category_id``
  and ``bbox`` become the GT's, keeping its score, so pycocotools matches it to that GT at IoU 1. If the GT
  box is already matched by a true positive, the fixed detection would be a duplicate and is removed instead;
  if several Cls/Loc errors claim one unmatched GT box, the highest-scoring one (Cls and Loc together, as in
  TIDE's ``BestGTMatch``) becomes the true positive and the others are removed.
* ``Dupe``, ``Bkg``, ``Both``: the detections are removed (``Both`` cannot say which GT box it meant).
* ``Miss``: the missed GT boxes are removed from the ground truth (TIDE lowers the GT count by them).

A ``dAP`` is clamped at 0, as TIDE does (a fix can only add true positives or remove false positives and
GT boxes that nothing found; interpolation and per-class means can still tip a value a hair below zero).

**Size buckets**: pycocotools' area ranges (small ≤ 32², medium 32²..96², large ≥ 96², both ends included,
on the GT ``area`` field and the detection box's ``w * h``). Error types are assigned once over all sizes and
fixed everywhere; each bucket's AP before and after is pycocotools' AP for that ``areaRng``, so a bucket's
``dAP`` is what the fix gains on the objects of that size. The counts put an error in the bucket of its GT
box (true positive: the matched box; ``Cls``/``Loc``/``Dupe``: the box named above; ``Miss``: the box
itself) and ``Bkg``/``Both`` in the bucket of the detection's box.

Differences from the ``tidecv`` package (not installed here): a category whose GT boxes in a bucket all get
removed by the ``Miss`` fix drops out of that bucket's mean (pycocotools' rule for a category without GT;
tidecv keeps it at AP 0 when it still has false positives), and a bucket left without any GT box has no AP:
its ``Miss`` is ``None``. ``Loc`` requires IoU < ``t_f`` (tidecv's ≤ only differs at exactly ``t_f``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from sod.evaluation.coco_eval import BUCKETS, _index_detections, _mean_valid
from sod.io import save_figure

# TIDE's foreground and background IoU thresholds.
T_F = 0.5
T_B = 0.1
# The error types, in the order of the report, the table and the figure.
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
# Bar colour of each error type in errors.png.
ERROR_COLORS = {
    "Cls": "tab:red",
    "Loc": "tab:orange",
    "Both": "tab:olive",
    "Dupe": "tab:purple",
    "Bkg": "tab:cyan",
    "Miss": "tab:blue",
}
# pycocotools' size buckets, px² (its defaults: [0, 1e10], [0, 32²], [32², 96²], [96², 1e10]).
AREA_RANGES = dict(zip(BUCKETS, Params(iouType="bbox").areaRng, strict=True))
TABLE_COLUMNS = ["pass", "bucket", "AP50", "gt_instances", "error", "dAP", "count"]


@dataclass
class ErrorAssignment:
    """Every detection's and GT box's outcome under TIDE's rules (see the module docstring).

    Detection ids are positions in the detection list plus one (the ids :func:`_index_detections` gives);
    GT ids are the GT file's annotation ids. Detections pycocotools ignores (on a crowd box, or beyond
    ``max_dets``) appear in none of the fields.

    Attributes:
        kind: detection id → ``"TP"`` or one of :data:`ERROR_TYPES` (all but ``Miss``).
        gt_of: detection id → the GT id it is about: the matched box (TP), the box a ``Cls``/``Loc`` fix
            targets, the matched box a ``Dupe`` repeats. Absent for ``Bkg`` and ``Both``.
        fixed_to: detection id → GT id, for the ``Cls``/``Loc`` errors the oracle turns into a true positive
            (the other Cls/Loc errors are removed by their fix).
        missed: GT ids of the ``Miss`` errors.
    """

    kind: dict[int, str] = field(default_factory=dict)
    gt_of: dict[int, int] = field(default_factory=dict)
    fixed_to: dict[int, int] = field(default_factory=dict)
    missed: list[int] = field(default_factory=list)


def _cocoeval(
    coco_gt: COCO, coco_dt: COCO, image_ids: Sequence[int], max_dets: int, t_f: float, all_sizes_only: bool
) -> COCOeval:
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.imgIds = list(image_ids)
    ev.params.iouThrs = np.array([t_f])
    ev.params.maxDets = [max_dets]
    if all_sizes_only:
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
    return ev


def assign_errors(
    coco_gt: COCO,
    dets: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    max_dets: int = 100,
    t_f: float = T_F,
    t_b: float = T_B,
) -> ErrorAssignment:
    """Assign each detection and each unmatched GT box its TIDE outcome (rules in the module docstring).

    Args:
        coco_gt: the ground truth (non-crowd boxes count; crowd boxes only make detections on them ignored).
        dets: detections in COCO result format, ``bbox`` as ``[x, y, w, h]`` px.
        image_ids: the images scored (their GT boxes count even when they have no detection).
        max_dets: detections per image and category that count (pycocotools' ``maxDets``).
        t_f, t_b: foreground and background IoU thresholds.

    Returns:
        The :class:`ErrorAssignment`.
    """
    out = ErrorAssignment()
    if not image_ids:
        return out
    coco_dt = _index_detections(coco_gt, list(dets))
    ev = _cocoeval(coco_gt, coco_dt, image_ids, max_dets, t_f, all_sizes_only=True)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    # pycocotools' matching: which detections count, which are true positives, which GT boxes they took.
    counted: dict[int, list[int]] = {}  # image id → ids of its counted detections
    used: set[int] = set()
    for e in ev.evalImgs:
        if e is None:
            continue
        for det_id, gt_id, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], strict=True):
            if ignored:
                continue
            counted.setdefault(e["image_id"], []).append(det_id)
            if gt_id > 0:
                out.kind[det_id], out.gt_of[det_id] = "TP", int(gt_id)
                used.add(int(gt_id))

    claimed: set[int] = set()  # unmatched GT boxes a Cls/Loc fix turns into a true positive
    for image_id in sorted(image_ids):
        gts = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a["iscrowd"]]
        # Highest score first (ties: earlier detection): the best claimant of a GT box comes first.
        fps = sorted(
            (d for d in counted.get(image_id, []) if d not in out.kind),
            key=lambda d: (-coco_dt.anns[d]["score"], d),
        )
        if not fps:
            continue
        if not gts:
            out.kind.update(dict.fromkeys(fps, "Bkg"))
            continue
        # IoU [D, G] of the false positives against the image's non-crowd GT boxes (both xywh).
        iou = np.asarray(
            mask_utils.iou([coco_dt.anns[d]["bbox"] for d in fps], [g["bbox"] for g in gts], [0] * len(gts))
        ).reshape(len(fps), len(gts))
        gt_cat = np.array([g["category_id"] for g in gts])
        gt_used = np.array([g["id"] in used for g in gts])
        for row, det_id in zip(iou, fps, strict=True):
            same = gt_cat == coco_dt.anns[det_id]["category_id"]
            iou_same, iou_other = np.where(same, row, 0.0), np.where(same, 0.0, row)
            iou_dupe = np.where(gt_used, iou_same, 0.0)
            if t_b <= iou_same.max() < t_f:
                kind, target = "Loc", int(iou_same.argmax())
            elif iou_other.max() >= t_f:
                kind, target = "Cls", int(iou_other.argmax())
            elif iou_dupe.max() >= t_f:
                kind, target = "Dupe", int(iou_dupe.argmax())
            elif row.max() < t_b:
                kind, target = "Bkg", None
            else:
                kind, target = "Both", None
            out.kind[det_id] = kind
            if target is None:
                continue
            gt_id = gts[target]["id"]
            out.gt_of[det_id] = gt_id
            if kind in ("Cls", "Loc") and gt_id not in used and gt_id not in claimed:
                claimed.add(gt_id)
                out.fixed_to[det_id] = gt_id

    out.missed = [
        a["id"]
        for image_id in sorted(image_ids)
        for a in coco_gt.imgToAnns.get(image_id, [])
        if not a["iscrowd"] and a["id"] not in used and a["id"] not in claimed
    ]
    return out


def fix_errors(
    coco_gt: COCO, dets: Sequence[Mapping[str, Any]], assignment: ErrorAssignment, error: str
) -> tuple[COCO, list[dict[str, Any]]]:
    """The ground truth and detections after the oracle fixed every error of one type.

    Args:
        coco_gt, dets: as for :func:`assign_errors` (not modified).
        assignment: :func:`assign_errors` of them.
        error: one of :data:`ERROR_TYPES`.

    Returns:
        ``(coco_gt, dets)``: for ``Miss`` a new ``COCO`` without the missed GT boxes and the same detections;
        otherwise the same ``coco_gt`` and new detections in which that type's errors are either turned into
        their GT box (``category_id`` and ``bbox`` [x, y, w, h] copied, score kept) or removed.
    """
    if error not in ERROR_TYPES:
        raise ValueError(f"unknown error type {error!r}; expected one of {ERROR_TYPES}")
    if error == "Miss":
        missed = set(assignment.missed)
        return _coco_without(coco_gt, missed), [dict(d) for d in dets]
    fixed = []
    for det_id, d in enumerate(dets, start=1):
        if assignment.kind.get(det_id) != error:
            fixed.append(dict(d))
        elif det_id in assignment.fixed_to:
            gt = coco_gt.anns[assignment.fixed_to[det_id]]
            fixed.append({**d, "category_id": gt["category_id"], "bbox": list(gt["bbox"])})
    return coco_gt, fixed


def ap50_by_bucket(
    coco_gt: COCO, dets: Sequence[Mapping[str, Any]], image_ids: Sequence[int], max_dets: int = 100, t_f: float = T_F
) -> dict[str, float | None]:
    """pycocotools' AP at IoU ``t_f`` per size bucket: ``COCOeval`` with ``iouThrs = [t_f]``.

    Returns:
        ``{"all", "small", "medium", "large"}`` → AP (0–1), the mean over categories with GT in the bucket;
        None for a bucket without GT (and everywhere when ``image_ids`` is empty).
    """
    if not image_ids:
        return dict.fromkeys(BUCKETS)
    ev = _cocoeval(coco_gt, _index_detections(coco_gt, list(dets)), image_ids, max_dets, t_f, all_sizes_only=False)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [T=1, R recall, K category, A area, M=1]
    return {bucket: _mean_valid(precision[0, :, :, a, 0]) for a, bucket in enumerate(BUCKETS)}


def error_breakdown(
    coco_gt: COCO,
    dets: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    max_dets: int = 100,
    t_f: float = T_F,
    t_b: float = T_B,
) -> dict[str, dict[str, Any]]:
    """TIDE's main-error dAPs and counts per size bucket.

    Args:
        coco_gt, dets, image_ids, max_dets, t_f, t_b: as for :func:`assign_errors`.

    Returns:
        per bucket (``all, small, medium, large``): ``AP50`` (AP at IoU ``t_f``), one ``dAP`` per error type
        (``Cls, Loc, Both, Dupe, Bkg, Miss``; None where the bucket has no GT before or after the fix) and
        ``counts``: ``{"GT": non-crowd GT boxes, "TP": true positives, one count per error type}``.
    """
    assignment = assign_errors(coco_gt, dets, image_ids, max_dets, t_f, t_b)
    base = ap50_by_bucket(coco_gt, dets, image_ids, max_dets, t_f)
    result: dict[str, dict[str, Any]] = {bucket: {"AP50": base[bucket]} for bucket in BUCKETS}
    for error in ERROR_TYPES:
        fixed = ap50_by_bucket(*fix_errors(coco_gt, dets, assignment, error), image_ids, max_dets, t_f)
        for bucket in BUCKETS:
            before, after = base[bucket], fixed[bucket]
            result[bucket][error] = None if before is None or after is None else max(after - before, 0.0)
    counts = _counts(coco_gt, dets, image_ids, assignment)
    for bucket in BUCKETS:
        result[bucket]["counts"] = counts[bucket]
    return result


def errors_table(breakdowns: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """The ``errors.csv`` table: one row per pass, size bucket and error type.

    Args:
        breakdowns: pass name (``full``, ``sliced``) → :func:`error_breakdown`.

    Returns:
        columns ``pass, bucket, AP50, gt_instances, error, dAP, count``; AP50 and dAP NaN where undefined.
    """
    rows = [
        [name, bucket, b["AP50"], b["counts"]["GT"], error, b[error], b["counts"][error]]
        for name, breakdown in breakdowns.items()
        for bucket, b in breakdown.items()
        for error in ERROR_TYPES
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS).astype({"AP50": float, "dAP": float})


def plot_errors(table: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars: per size bucket, the dAP of each error type (one panel per pass, shared y axis).

    Args:
        table: :func:`errors_table`; rows with NaN dAP draw no bar.
        path: the PNG to write (atomically, same bytes for the same table).
    """
    passes = list(dict.fromkeys(table["pass"])) if not table.empty else []
    fig = Figure(figsize=(6.5 * max(1, len(passes)), 4.5), dpi=100)
    axes = fig.subplots(1, max(1, len(passes)), sharey=True, squeeze=False)[0]
    if not passes:
        axes[0].text(
            0.5, 0.5, "no evaluation: no error breakdown", ha="center", va="center", transform=axes[0].transAxes
        )
    top = float(np.nanmax(table["dAP"].to_numpy(dtype=float))) if table["dAP"].notna().any() else 0.0
    width = 0.8 / len(ERROR_TYPES)
    for ax, name in zip(axes, passes, strict=False):
        rows = table[table["pass"] == name]
        x = np.arange(len(BUCKETS))
        for i, error in enumerate(ERROR_TYPES):
            by_bucket = rows[rows["error"] == error].set_index("bucket")
            values = [by_bucket["dAP"].get(b, np.nan) for b in BUCKETS]
            offset = (i - (len(ERROR_TYPES) - 1) / 2) * width
            ax.bar(x + offset, np.nan_to_num(values, nan=0.0), width, color=ERROR_COLORS[error], label=error)
        labels = []
        for bucket in BUCKETS:
            first = rows[rows["bucket"] == bucket].head(1)
            ap = float(first["AP50"].iloc[0]) if len(first) else np.nan
            n = int(first["gt_instances"].iloc[0]) if len(first) else 0
            labels.append(f"{bucket}\nAP50 {ap:.3f}, n={n}" if np.isfinite(ap) else f"{bucket}\nno GT")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title(f"{name}: AP50 lost to each error type (TIDE)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(ERROR_TYPES), loc="upper center")
    axes[0].set_ylabel("dAP50 = AP50 after the oracle fix − AP50")
    axes[0].set_ylim(0, max(0.05, top) * 1.25)  # headroom for the legend row
    fig.tight_layout()
    FigureCanvasAgg(fig)  # made without pyplot: give it the Agg canvas
    save_figure(fig, path)


def _bucket_of(area: float) -> list[str]:
    """The buckets an area (px²) falls in, pycocotools' ranges with both ends included."""
    return [b for b, (lo, hi) in AREA_RANGES.items() if lo <= area <= hi]


def _counts(
    coco_gt: COCO, dets: Sequence[Mapping[str, Any]], image_ids: Sequence[int], assignment: ErrorAssignment
) -> dict[str, dict[str, int]]:
    counts = {bucket: dict.fromkeys(("GT", "TP", *ERROR_TYPES), 0) for bucket in BUCKETS}

    def add(area: float, key: str) -> None:
        for bucket in _bucket_of(area):
            counts[bucket][key] += 1

    for image_id in image_ids:
        for a in coco_gt.imgToAnns.get(image_id, []):
            if not a["iscrowd"]:
                add(a["area"], "GT")
    for det_id, kind in assignment.kind.items():
        if det_id in assignment.gt_of:
            add(coco_gt.anns[assignment.gt_of[det_id]]["area"], kind)
        else:  # Bkg, Both: the detection's own box
            _, _, w, h = dets[det_id - 1]["bbox"]
            add(w * h, kind)
    for gt_id in assignment.missed:
        add(coco_gt.anns[gt_id]["area"], "Miss")
    return counts


def _coco_without(coco_gt: COCO, ann_ids: set[int]) -> COCO:
    """A copy of ``coco_gt`` without the annotations ``ann_ids``."""
    coco = COCO()
    coco.dataset = {
        **coco_gt.dataset,
        "annotations": [a for a in coco_gt.dataset.get("annotations", []) if a["id"] not in ann_ids],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
