"""PNG figures of an evaluation: PR curves by size bucket, recall versus object size (full image vs sliced), a
preview grid.

Pure drawing: the functions take DataFrames (from :class:`sod.evaluation.coco_eval.CocoEvaluator`) or
numpy images and boxes, and write one PNG atomically. They use matplotlib's object API on the Agg canvas
(no pyplot state) and strip the PNG's software tag, so the same input gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw
from torchvision.ops import box_iou

from sod.config import COCO_SMALL_AREA
from sod.io import save_figure, save_png

BUCKET_COLORS = {"all": "black", "small": "tab:red", "medium": "tab:orange", "large": "tab:blue"}
GT_COLOR = "lime"
PRED_COLOR = "deepskyblue"  # a prediction on an object of its class
WRONG_CLASS_COLOR = "orange"  # on an object (IoU ≥ iou_thresh), but of another class
NO_OBJECT_COLOR = "red"  # on no object: background, or too far off any box
MISSED_COLOR = "magenta"  # missed small GT: stands out from all of them
PRED_KIND_COLORS = (PRED_COLOR, WRONG_CLASS_COLOR, NO_OBJECT_COLOR)  # indexed by prediction_kinds()


def _save(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)  # these Figures are made without pyplot: give them the Agg canvas
    save_figure(fig, path)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def plot_pr_curves(pr: pd.DataFrame, path: str | Path) -> None:
    """Precision-recall curves per size bucket: solid at IoU 0.50:0.95, dashed at IoU 0.5.

    Args:
        pr: :meth:`CocoEvaluator.pr_curves` (columns ``bucket, recall, precision, precision_50``).
        path: the PNG to write.
    """
    fig = Figure(figsize=(6, 4.5), dpi=100)
    ax = fig.add_subplot()
    if pr.empty:
        _note(ax, "no ground truth: no curves")
    for bucket, color in BUCKET_COLORS.items():
        rows = pr[pr["bucket"] == bucket]
        if rows.empty:
            continue
        ax.plot(rows["recall"], rows["precision"], color=color, label=f"{bucket} IoU .50:.95")
        ax.plot(rows["recall"], rows["precision_50"], color=color, linestyle="--", label=f"{bucket} IoU .50")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title="PR curves by object size")
    ax.grid(alpha=0.3)
    if not pr.empty:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _save(fig, path)


# The recall series of ``recall_vs_size.csv`` that the figure draws, in this order: label and bar colour.
RECALL_SERIES = {"recall_full": ("full image", "tab:blue"), "recall_sliced": ("sliced", "tab:orange")}


def plot_recall_vs_size(rs: pd.DataFrame, path: str | Path) -> None:
    """Recall at IoU 0.5 per bin of sqrt(GT area), full image vs sliced side by side, the size-bucket borders
    marked: AI-TOD's 8 and 16 px, COCO's 32 and 96 px.

    Args:
        rs: the ``recall_vs_size.csv`` table of ``sod evaluate``: columns ``size_min, size_max,
            gt_instances`` and ``recall_full``, plus ``recall_sliced`` when sliced inference ran (one bar
            per series and bin; a series left out is not drawn).
        path: the PNG to write.
    """
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    series = [name for name in RECALL_SERIES if name in rs.columns]
    if rs.empty or not series:
        _note(ax, "no ground truth")
    else:
        labels = [
            f"{lo:g}-{hi:g}" if math.isfinite(hi) else f"≥{lo:g}"
            for lo, hi in zip(rs["size_min"], rs["size_max"], strict=True)
        ]
        x = np.arange(len(rs))
        width = 0.8 / len(series)
        for i, name in enumerate(series):
            label, color = RECALL_SERIES[name]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, rs[name].astype(float), width, color=color, label=label)
        top = rs[series].astype(float).max(axis=1)
        for xi, (r, n) in enumerate(zip(top, rs["gt_instances"], strict=True)):
            ax.text(xi, r + 0.01, f"n={n}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, labels, rotation=60, fontsize=7)
        # AI-TOD's very tiny|tiny and tiny|small borders, then COCO's small|medium and medium|large.
        for border in (8, 16, math.sqrt(COCO_SMALL_AREA), 96):
            # A dotted line between the last bin below the border and the first at or above it.
            at = int(np.searchsorted(rs["size_min"].to_numpy(), border))
            if 0 < at < len(rs):
                ax.axvline(at - 0.5, color="gray", linestyle=":")
        ax.legend(fontsize=7, loc="upper left", ncol=len(series))  # one row above the bars (ylim 1.25)
    ax.set(ylim=(0, 1.25), xlabel="sqrt(GT area), px", ylabel="recall @ IoU 0.5", title="Recall versus object size")
    fig.tight_layout()
    _save(fig, path)


@dataclass
class PreviewItem:
    """One val image for the preview grid.

    Attributes:
        image: ``(H, W, 3) uint8``.
        gt_boxes_xyxy: ``(G, 4)`` px; pred_boxes_xyxy ``(P, 4)`` px; pred_scores ``(P,)``.
        gt_labels, pred_labels: ``(G,)``, ``(P,)`` category ids; None = match boxes class-agnostically.
        gt_areas: ``(G,)`` COCO ``area`` for the size test; None = box area.
        title: shown above the image.
    """

    image: np.ndarray
    gt_boxes_xyxy: np.ndarray
    pred_boxes_xyxy: np.ndarray
    pred_scores: np.ndarray
    gt_labels: np.ndarray | None = None
    pred_labels: np.ndarray | None = None
    gt_areas: np.ndarray | None = None
    title: str = field(default="")


def missed_small(item: PreviewItem, score_thresh: float = 0.3, iou_thresh: float = 0.5) -> np.ndarray:
    """Which GT boxes are small (area < 32²) and found by no prediction scoring ≥ ``score_thresh``.

    Found means IoU ≥ ``iou_thresh`` with a prediction of the same class (any class when labels are None).

    Returns:
        ``(G,) bool``.
    """
    gt = np.asarray(item.gt_boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    pred = np.asarray(item.pred_boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    keep = np.asarray(item.pred_scores).reshape(-1) >= score_thresh
    areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) if item.gt_areas is None else np.asarray(item.gt_areas)
    small = areas < COCO_SMALL_AREA
    if not keep.any():
        return small
    iou = box_iou(torch.from_numpy(gt), torch.from_numpy(pred[keep])).numpy()
    if item.gt_labels is not None and item.pred_labels is not None:
        same = np.asarray(item.gt_labels)[:, None] == np.asarray(item.pred_labels)[keep][None, :]
        iou = np.where(same, iou, 0.0)
    found = (iou >= iou_thresh).any(axis=1) if iou.size else np.zeros(len(gt), dtype=bool)
    return small & ~found


def prediction_kinds(item: PreviewItem, score_thresh: float = 0.3, iou_thresh: float = 0.5) -> np.ndarray:
    """What each prediction scoring ≥ ``score_thresh`` lies on, for the preview's colours.

    0: a GT box of its class at IoU ≥ ``iou_thresh`` (without labels: any GT box); 1: a GT box only of another
    class; 2: no GT box at that IoU (a background detection, or one too far off to count). Duplicates of a found
    object are 0 too: the picture shows what a box lies on, pycocotools' one-to-one matching is in the TIDE plot.

    Returns:
        ``(K,) int64`` for the K predictions with score ≥ ``score_thresh``, in their order.
    """
    gt = np.asarray(item.gt_boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    keep = np.asarray(item.pred_scores).reshape(-1) >= score_thresh
    pred = np.asarray(item.pred_boxes_xyxy, dtype=np.float64).reshape(-1, 4)[keep]
    if not len(pred):
        return np.zeros(0, dtype=np.int64)
    if not len(gt):
        return np.full(len(pred), 2, dtype=np.int64)
    on_object = box_iou(torch.from_numpy(pred), torch.from_numpy(gt)).numpy() >= iou_thresh  # (K, G)
    if item.gt_labels is not None and item.pred_labels is not None:
        same = np.asarray(item.pred_labels).reshape(-1)[keep][:, None] == np.asarray(item.gt_labels)[None, :]
        right = (on_object & same).any(axis=1)
    else:
        right = on_object.any(axis=1)
    return np.where(right, 0, np.where(on_object.any(axis=1), 1, 2)).astype(np.int64)


def plot_detection_grid(
    items: Sequence[PreviewItem], path: str | Path, score_thresh: float = 0.3, iou_thresh: float = 0.5, cols: int = 4
) -> None:
    """A grid of images with GT (green), predictions scoring ≥ ``score_thresh`` (dashed: blue on an object of
    their class, orange on one of another class, red on none; :func:`prediction_kinds`) and missed small GT
    (magenta, thick) drawn on them; each title counts the right-class predictions.

    Args:
        items: the images and their boxes.
        path: the PNG to write.
        score_thresh: predictions drawn and counted as found from this score up.
        iou_thresh: IoU at which a prediction finds a GT box (see :func:`missed_small`).
        cols: images per row.
    """
    n = max(len(items), 1)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    if not items:
        _note(axes[0], "no images")
    for ax, item in zip(axes, items, strict=False):
        ax.imshow(item.image, interpolation="nearest")
        missed = missed_small(item, score_thresh, iou_thresh)
        gt = np.asarray(item.gt_boxes_xyxy, dtype=float).reshape(-1, 4)
        for box, is_missed in zip(gt, missed, strict=True):
            color, width = (MISSED_COLOR, 2.0) if is_missed else (GT_COLOR, 1.0)
            ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, edgecolor=color, linewidth=width))
        pred = np.asarray(item.pred_boxes_xyxy, dtype=float).reshape(-1, 4)
        kinds = prediction_kinds(item, score_thresh, iou_thresh)
        for box, kind in zip(pred[np.asarray(item.pred_scores).reshape(-1) >= score_thresh], kinds, strict=True):
            color = PRED_KIND_COLORS[kind]
            ax.add_patch(
                Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, edgecolor=color, linewidth=0.8, linestyle="--")
            )
        right = int((kinds == 0).sum())
        title = f"{item.title}  right class {right}/{len(kinds)}  missed small: {int(missed.sum())}"
        ax.set_title(title.strip(), fontsize=8)
    fig.suptitle(
        f"green: GT   dashed, score ≥ {score_thresh:g}: blue on an object of its class, orange of another class, "
        "red on none   magenta: missed small GT",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)


SR_PREVIEW_CELL = 128  # px: every crop of the SR preview strip is shown at this size
SR_PREVIEW_HEADER = 16  # px: the strip's header row of column titles


def plot_sr_preview(rows: Sequence[Sequence[np.ndarray]], columns: Sequence[str], path: str | Path) -> None:
    """A strip of image crops: a header of ``columns`` titles, then one row of crops per item of ``rows``.

    Every crop is zoomed to :data:`SR_PREVIEW_CELL` px with nearest neighbour, so pixels stay visible. Drawn
    with PIL rather than matplotlib: one image pixel per screen pixel, no axes.

    Args:
        rows: per row, one ``uint8 (h, w, 3)`` crop per column.
        columns: the column titles.
        path: the PNG to write, ``16 + 128 · len(rows)`` px high and ``128 · len(columns)`` px wide.
    """
    cell = SR_PREVIEW_CELL
    canvas = Image.new("RGB", (len(columns) * cell, SR_PREVIEW_HEADER + len(rows) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(columns):
        draw.text((c * cell + 4, 2), title, fill="black")
    for r, row in enumerate(rows):
        for c, crop in enumerate(row):
            tile = Image.fromarray(crop).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (c * cell, SR_PREVIEW_HEADER + r * cell))
    save_png(path, np.asarray(canvas))


def draw_boxes(
    image_rgb: np.ndarray,
    boxes_xyxy: np.ndarray,
    captions: Sequence[str],
    color: str = PRED_COLOR,
    width: int | None = None,
) -> np.ndarray:
    """The image with each box drawn on it and its caption above it, at the image's own resolution.

    Drawn with PIL (one image pixel per output pixel, no figure), for ``sod predict --draw``.

    Args:
        image_rgb: ``(H, W, 3) uint8``.
        boxes_xyxy: ``(N, 4)`` in image pixels.
        captions: one text per box (e.g. ``"face 0.87"``); empty strings draw none.
        color: the box and text colour.
        width: line width in px; None = 1 px per 800 px of the image's long side (at least 1), so boxes stay
            visible on large images.

    Returns:
        A new ``(H, W, 3) uint8`` array.
    """
    canvas = Image.fromarray(image_rgb)
    draw = ImageDraw.Draw(canvas)
    width = max(1, max(canvas.size) // 800) if width is None else width
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    for (x1, y1, x2, y2), caption in zip(boxes, captions, strict=True):
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        if caption:
            draw.text((x1, max(0.0, y1 - 11)), caption, fill=color)
    return np.asarray(canvas)
