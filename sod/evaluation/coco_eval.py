"""COCO box evaluation with pycocotools, behind one evaluator protocol (detectron2 style).

An inference loop feeds an evaluator batch by batch and asks for the numbers at the end::

    evaluator.reset()
    for inputs, outputs in ...:        # outputs as torchvision detectors return them
        evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()     # {"AP": ..., "AP_small": ..., "max_dets": ...}

Conventions of :class:`CocoEvaluator` (read these before comparing numbers with other tools):

* ``max_dets`` counts detections per image: the evaluator keeps each image's ``max_dets`` best-scoring
  detections and passes ``maxDets = [1, 10, 100, max_dets]`` (values ≥ max_dets dropped) to pycocotools.
  AP and the size-bucket APs/ARs are read from ``COCOeval.eval`` at the LAST maxDets, because
  ``COCOeval.summarize()`` hard-codes 100 for AP (it prints −1 when 100 is not in the list). pycocotools
  applies maxDets per image *and category*, a looser cap than ours, so :meth:`CocoEvaluator.detections`
  re-scored by plain pycocotools with ``maxDets[-1] = max_dets`` gives the same numbers.
* Size buckets use the GT ``area`` field (not the box) with pycocotools' ranges: small ≤ 32², medium
  32²..96², large ≥ 96² (pycocotools includes both ends of each range, so an area of exactly 32² counts
  as small and as medium).
* AI-TOD's finer split of COCO's small bucket (Wang et al., "Tiny Object Detection in Aerial Images",
  ICPR 2020) is reported beside it: very tiny ``AP_vt``/``AR_vt`` (area 0..8²), tiny ``AP_t``/``AR_t``
  (8²..16²) and small ``AP_s16``/``AR_s16`` (16²..32²). They are three more entries of the same
  ``COCOeval``'s ``params.areaRng``, so pycocotools' own rules apply: both ends included (an area of
  exactly 8² is very tiny and tiny), GT outside the range ignored, a detection matched to an ignored GT
  ignored, an unmatched detection counted as FP only when its own area lies in the range.
* Crowd GT (``iscrowd: 1``) is passed to pycocotools as it is: it never counts as an object to find, and
  a detection that matches no real object but lies inside a crowd region (pycocotools' crowd IoU,
  intersection over the detection's own area, at least the IoU threshold) is ignored, neither TP nor FP.
* Undefined metrics are ``None`` in the result dict (and NaN in the DataFrames, empty cells in CSV): a size
  bucket with no GT, every metric when no processed image has a GT box, and every metric when no image was
  processed at all (then ``images`` is 0). They are never −1 and never NaN in the dict, so it is valid JSON.
* A detector with no detections at all scores AP 0.0 wherever GT exists (pycocotools' ``loadRes`` cannot
  take an empty list; the detections are indexed here without it).
* Only processed images are scored: evaluating a subset of the val set scores that subset.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from sod.errors import DataError

log = logging.getLogger(__name__)

# AI-TOD's area ranges (px², GT ``area``) by result-key suffix: very tiny, tiny, small (sqrt(area) 8, 16, 32 px).
AITOD_AREA_RANGES = {"vt": (0.0, 8.0**2), "t": (8.0**2, 16.0**2), "s16": (16.0**2, 32.0**2)}
# Keys of the result dict besides the AR_<maxDets> ones, in the order they are reported.
AP_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", *(f"AP_{b}" for b in AITOD_AREA_RANGES))
AR_SIZE_KEYS = ("AR_small", "AR_medium", "AR_large", *(f"AR_{b}" for b in AITOD_AREA_RANGES))
# Index of each COCO bucket in COCOeval.params.areaRng / areaRngLbl (pycocotools' defaults, kept first).
BUCKETS = ("all", "small", "medium", "large")
# Every bucket reported, by key suffix, at its index in areaRng: COCO's, then AI-TOD's appended after them.
SIZE_BUCKETS = (*BUCKETS[1:], *AITOD_AREA_RANGES)
# Bin edges (px) of sqrt(GT area) for recall versus object size: fine where small objects live, COCO's
# 32 and 96 px are edges.
SIZE_BINS = (0, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 192, 256, 512, float("inf"))


class Evaluator(Protocol):
    """What an inference loop drives: reset, feed batches, read a flat metrics dict."""

    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Tensor]]) -> None:
        """Record one batch: ``inputs[i]`` describes the image that ``outputs[i]`` was predicted for."""

    def evaluate(self) -> dict[str, Any]:
        """Metrics over every batch processed since the last reset (JSON-serialisable values)."""


def _mean_valid(values: np.ndarray) -> float | None:
    """Mean of the entries > −1 (pycocotools marks 'no GT' with −1); None when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def coco_results(
    image_id: int,
    out: Mapping[str, Tensor],
    category: Callable[[int], int],
    score_thresh: float = 0.0,
    max_dets: int | None = None,
) -> list[dict[str, Any]]:
    """One image's prediction in COCO result format, best score first.

    Args:
        image_id: the COCO image id.
        out: ``{"boxes": Tensor[N, 4] xyxy in image pixels, "scores": Tensor[N], "labels": Tensor[N] int64}``.
        category: model label → COCO ``category_id`` (may raise DataError for an unknown label).
        score_thresh: boxes scoring below this are dropped first.
        max_dets: keep the best this many; None keeps all.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h] (bbox_xywh, px, 2 decimals), "score" (5 decimals)}]``.
    """
    boxes = torch.as_tensor(out["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = torch.as_tensor(out["scores"]).detach().to("cpu", torch.float64).reshape(-1)
    labels = torch.as_tensor(out["labels"]).detach().to("cpu").reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"image {image_id}: boxes, scores and labels differ in length")
    keep = scores >= score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    # The per-image cap; a stable sort keeps the detector's order among equal scores.
    order = torch.sort(scores, descending=True, stable=True).indices[:max_dets]
    dets = []
    for (x1, y1, x2, y2), score, label in zip(
        boxes[order].tolist(), scores[order].tolist(), labels[order].tolist(), strict=True
    ):
        # Rounded so the JSON stays small; scoring uses these same rounded values.
        bbox_xywh = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
        dets.append(
            {"image_id": image_id, "category_id": category(int(label)), "bbox": bbox_xywh, "score": round(score, 5)}
        )
    return dets


class CocoEvaluator:
    """COCO bbox AP/AR (overall, by size, per class) for torchvision-style detector outputs.

    Args:
        gt: the GT COCO file (``images``, ``annotations``, ``categories``) or a loaded ``COCO`` object.
        max_dets: detections per image that count (see the module docstring); ≥ 1.
        label_to_category: model label (contiguous 0..K−1) → COCO ``category_id``; None when the
            outputs' labels already are category ids.
        score_thresh: detections scoring below this are dropped before anything else.
    """

    def __init__(
        self,
        gt: str | Path | COCO,
        max_dets: int = 300,
        label_to_category: Mapping[int, int] | None = None,
        score_thresh: float = 0.0,
    ) -> None:
        if max_dets < 1:
            raise ValueError(f"max_dets must be ≥ 1, got {max_dets}")
        self.coco_gt = gt if isinstance(gt, COCO) else _load_gt(Path(gt))
        _check_gt(self.coco_gt)
        self.max_dets = int(max_dets)
        self.max_dets_list = [d for d in (1, 10, 100) if d < self.max_dets] + [self.max_dets]
        self.label_to_category = dict(label_to_category) if label_to_category is not None else None
        self.score_thresh = float(score_thresh)
        self._category_ids = set(self.coco_gt.getCatIds())
        self._image_ids = set(self.coco_gt.getImgIds())
        self.reset()

    # ------------------------------------------------------------------------------------ protocol
    def reset(self) -> None:
        self._dets: dict[int, list[dict[str, Any]]] = {}
        self._eval: COCOeval | None = None

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Tensor]]) -> None:
        """Record one batch of predictions.

        Args:
            inputs: per image a mapping with ``image_id`` (int or 0-d tensor), e.g. the targets of
                :class:`sod.data` datasets.
            outputs: per image ``{"boxes": Tensor[N, 4] xyxy in original image pixels, "scores": Tensor[N],
                "labels": Tensor[N] int64}``.

        Raises:
            DataError: an image id that is not in the GT file, or a label with no category.
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs, strict=True):
            image_id = int(inp["image_id"])
            if image_id not in self._image_ids:
                raise DataError(f"image_id {image_id} is not in the ground-truth file")
            self._dets[image_id] = self._to_coco(image_id, out)
        self._eval = None

    def evaluate(self) -> dict[str, Any]:
        """COCO metrics over the processed images (0–1 floats or None, see the module docstring).

        Returns:
            ``AP, AP50, AP75, AP_small, AP_medium, AP_large, AP_vt, AP_t, AP_s16`` (at ``max_dets``),
            ``AR_<d>`` for each d in ``max_dets_list`` (e.g. ``AR_1, AR_10, AR_100, AR_300``), ``AR_small,
            AR_medium, AR_large, AR_vt, AR_t, AR_s16`` (at ``max_dets``), then ``max_dets``, ``images``
            (processed), ``gt_instances`` (non-crowd GT boxes in them) and ``detections`` (scored).
        """
        keys = [*AP_KEYS, *(f"AR_{d}" for d in self.max_dets_list), *AR_SIZE_KEYS]
        result: dict[str, Any] = dict.fromkeys(keys)
        coco_eval = self._run()
        if coco_eval is None:
            log.warning("no images were evaluated: every metric is None")
        else:
            precision = coco_eval.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
            recall = coco_eval.eval["recall"]  # [T, K, A, M]
            iou50, iou75 = (int(np.argmin(np.abs(coco_eval.params.iouThrs - t))) for t in (0.5, 0.75))
            result["AP"] = _mean_valid(precision[:, :, :, 0, -1])
            result["AP50"] = _mean_valid(precision[iou50, :, :, 0, -1])
            result["AP75"] = _mean_valid(precision[iou75, :, :, 0, -1])
            for a, name in enumerate(SIZE_BUCKETS, start=1):
                result[f"AP_{name}"] = _mean_valid(precision[:, :, :, a, -1])
                result[f"AR_{name}"] = _mean_valid(recall[:, :, a, -1])
            for m, d in enumerate(self.max_dets_list):
                result[f"AR_{d}"] = _mean_valid(recall[:, :, 0, m])
            if result["AP"] is None:
                log.warning("the evaluated images hold no ground-truth box: every metric is None")
        result["max_dets"] = self.max_dets
        result["images"] = len(self._dets)
        result["gt_instances"] = self._gt_count()
        result["detections"] = sum(len(d) for d in self._dets.values())
        return result

    # ------------------------------------------------------------------------------------ extras
    @property
    def image_ids(self) -> list[int]:
        """Ids of the images processed since the last reset, sorted (the images scored)."""
        return sorted(self._dets)

    def detections(self) -> list[dict[str, Any]]:
        """The scored detections in COCO result format, ordered by image id then score.

        Returns:
            ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h] (bbox_xywh, px), "score": float}]``
            — what ``COCO.loadRes`` takes; at most ``max_dets`` per image.
        """
        return [d for image_id in sorted(self._dets) for d in self._dets[image_id]]

    def per_class_table(self) -> pd.DataFrame:
        """AP per category at ``max_dets``: one row per GT category, ordered by category id.

        Returns:
            columns ``category_id, name, gt_instances, AP, AP50, AP75, AP_small, AP_medium, AP_large, AP_vt,
            AP_t, AP_s16``; an AP is NaN where the category has no GT in that bucket among the processed images.
        """
        columns = ["category_id", "name", "gt_instances", *AP_KEYS]
        coco_eval = self._run()
        cat_ids = sorted(self._category_ids)
        counts = self._gt_count_by_category()
        rows = []
        for k, cat_id in enumerate(cat_ids):
            row: dict[str, Any] = {
                "category_id": cat_id,
                "name": self.coco_gt.cats[cat_id].get("name", str(cat_id)),
                "gt_instances": counts.get(cat_id, 0),
            }
            row.update(dict.fromkeys(AP_KEYS, np.nan))
            if coco_eval is not None:
                p = coco_eval.eval["precision"]
                iou50, iou75 = (int(np.argmin(np.abs(coco_eval.params.iouThrs - t))) for t in (0.5, 0.75))
                for key, values in (
                    ("AP", p[:, :, k, 0, -1]),
                    ("AP50", p[iou50, :, k, 0, -1]),
                    ("AP75", p[iou75, :, k, 0, -1]),
                    *((f"AP_{name}", p[:, :, k, a, -1]) for a, name in enumerate(SIZE_BUCKETS, start=1)),
                ):
                    value = _mean_valid(values)
                    row[key] = np.nan if value is None else value
            rows.append(row)
        return pd.DataFrame(rows, columns=columns).astype({k: float for k in AP_KEYS})

    def pr_curves(self) -> pd.DataFrame:
        """Precision-recall curves per size bucket, averaged over classes, at ``max_dets``.

        Returns:
            long format, columns ``bucket`` (all/small/medium/large), ``recall`` (pycocotools' 101-point
            grid 0..1), ``precision`` (mean over IoU 0.50:0.95) and ``precision_50`` (IoU 0.5). Buckets
            with no GT have no rows. Precision beyond the highest recall reached is 0 (as in COCO).
        """
        columns = ["bucket", "recall", "precision", "precision_50"]
        coco_eval = self._run()
        if coco_eval is None:
            return pd.DataFrame(columns=columns)
        p = coco_eval.eval["precision"]
        rec_thrs = coco_eval.params.recThrs
        iou50 = int(np.argmin(np.abs(coco_eval.params.iouThrs - 0.5)))
        frames = []
        for a, bucket in enumerate(BUCKETS):
            # A class with no GT in this bucket is −1 at every IoU and recall level: leave it out.
            valid = p[0, 0, :, a, -1] > -1
            if not valid.any():
                continue
            sel = p[:, :, valid, a, -1]  # [T, R, K']
            frames.append(
                pd.DataFrame(
                    {
                        "bucket": bucket,
                        "recall": rec_thrs,
                        "precision": sel.mean(axis=(0, 2)),
                        "precision_50": sel[iou50].mean(axis=1),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def recall_vs_size(self, bins: Sequence[float] = SIZE_BINS) -> pd.DataFrame:
        """Recall at IoU 0.5 (with ``max_dets``, class-aware) of GT boxes binned by sqrt(area).

        Args:
            bins: increasing edges in px of sqrt(GT ``area``); a box falls in ``[lo, hi)``.

        Returns:
            one row per non-empty bin: ``size_min, size_max`` (px), ``gt_instances``, ``matched``,
            ``recall`` (= matched / gt_instances). Crowd GT boxes are left out.
        """
        columns = ["size_min", "size_max", "gt_instances", "matched", "recall"]
        coco_eval = self._run()
        if coco_eval is None:
            return pd.DataFrame(columns=columns)
        iou50 = int(np.argmin(np.abs(coco_eval.params.iouThrs - 0.5)))
        sizes, matched = [], []
        for e in coco_eval.evalImgs:
            # evalImgs holds one entry per (category, area range, image); the 'all' range has every GT.
            if e is None or e["aRng"] != coco_eval.params.areaRng[0]:
                continue
            keep = np.asarray(e["gtIgnore"]) == 0
            if not keep.any():
                continue
            areas = np.array([self.coco_gt.anns[i]["area"] for i in e["gtIds"]], dtype=float)
            sizes.append(np.sqrt(areas[keep]))
            matched.append(np.asarray(e["gtMatches"])[iou50][keep] > 0)
        if not sizes:
            return pd.DataFrame(columns=columns)
        size, hit = np.concatenate(sizes), np.concatenate(matched)
        edges = np.asarray(bins, dtype=float)
        which = np.digitize(size, edges) - 1  # bin index i means edges[i] <= size < edges[i + 1]
        rows = []
        for i in range(len(edges) - 1):
            in_bin = which == i
            n = int(in_bin.sum())
            if n:
                m = int(hit[in_bin].sum())
                rows.append([float(edges[i]), float(edges[i + 1]), n, m, m / n])
        return pd.DataFrame(rows, columns=columns)

    # ------------------------------------------------------------------------------------ internals
    def _to_coco(self, image_id: int, out: Mapping[str, Tensor]) -> list[dict[str, Any]]:
        return coco_results(
            image_id, out, lambda label: self._category(label, image_id), self.score_thresh, self.max_dets
        )

    def _category(self, label: int, image_id: int) -> int:
        if self.label_to_category is None:
            cat = label
        elif label in self.label_to_category:
            cat = self.label_to_category[label]
        else:
            raise DataError(f"image {image_id}: model label {label} has no entry in label_to_category")
        if cat not in self._category_ids:
            raise DataError(f"image {image_id}: category_id {cat} is not a category of the ground-truth file")
        return cat

    def _run(self) -> COCOeval | None:
        """Run (or reuse) COCOeval over the processed images; None when there are none."""
        if self._eval is not None or not self._dets:
            return self._eval
        coco_dt = _index_detections(self.coco_gt, self.detections())
        coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = sorted(self._dets)
        coco_eval.params.maxDets = list(self.max_dets_list)
        # AI-TOD's buckets appended after COCO's four, so one evaluate() scores all seven with pycocotools'
        # matching and ignore rules, and COCO's keep their usual indices (0..3).
        coco_eval.params.areaRng = [*coco_eval.params.areaRng, *(list(r) for r in AITOD_AREA_RANGES.values())]
        coco_eval.params.areaRngLbl = [*coco_eval.params.areaRngLbl, *AITOD_AREA_RANGES]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_eval.evaluate()
            coco_eval.accumulate()
        self._eval = coco_eval
        return coco_eval

    def _gt_anns(self) -> Iterable[dict[str, Any]]:
        """Non-crowd GT annotations of the processed images."""
        for image_id in sorted(self._dets):
            yield from (a for a in self.coco_gt.imgToAnns[image_id] if not a["iscrowd"])

    def _gt_count(self) -> int:
        return sum(1 for _ in self._gt_anns())

    def _gt_count_by_category(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for ann in self._gt_anns():
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
        return counts


def _load_gt(path: Path) -> COCO:
    if not path.is_file():
        raise DataError(f"ground-truth file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not a usable COCO file: {exc}") from None


def _check_gt(coco_gt: COCO) -> None:
    """pycocotools needs ``bbox``, ``area`` and ``iscrowd`` on every GT annotation; name the first without."""
    for ann in coco_gt.dataset.get("annotations", []):
        for key in ("bbox", "area", "iscrowd"):
            if key not in ann:
                raise DataError(f"ground-truth annotation {ann.get('id')!r} has no {key!r}")


def _index_detections(coco_gt: COCO, dets: list[dict[str, Any]]) -> COCO:
    """A COCO object of detections, as ``COCO.loadRes`` builds it for boxes, that also takes an empty list."""
    anns = []
    for i, d in enumerate(dets, start=1):
        x, y, w, h = d["bbox"]
        anns.append({**d, "id": i, "area": w * h, "iscrowd": 0})
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt
