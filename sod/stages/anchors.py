"""``sod anchors``: anchors fitted to the training boxes on the stride grid, scored against torchvision's.

Inputs: the (augmented) train COCO JSON; only ``images[].width/height`` and ``annotations[].bbox/area``
are read, never the pixels. Every box is scaled to the detector's input size exactly as torchvision's
``GeneralizedRCNNTransform`` would (``detector.min_size`` / ``max_size``, see
:func:`sod.models.anchors.input_scale`), times ``detector.upscale_factor`` when ``detector.input_upscale``
puts an upscaling front end before the network.

Outputs (paths from the command line):
  * ``out`` (``models/anchors.json``): ``method``, ``levels``, ``strides``, ``anchors_wh`` (per level a
    list of ``[w, h]`` in input pixels, the same count on every level: ``anchors.anchors_per_level``, or
    9 for ``method: default``), ``min_size``, ``max_size`` (of the network's input); the detector builds
    its anchor generator from it;
  * ``report`` (``reports/anchors.json``): under ``default`` (torchvision's anchors for the configured
    levels) and ``tuned`` (the fitted anchors, fitted for either method; ``method`` says which set ``out``
    holds):
    the grid-aware figures, each per bucket (``all``, COCO ``small``/``medium``/``large`` by the
    annotation's original ``area``, ``under_12px`` by its original long side), computed with the anchors
    where the detector has them (every level's stride grid over the padded input) and torchvision's own
    ``Matcher`` (:func:`sod.models.anchors.match_on_grid`):
      - ``bpr_grid``: share of boxes with a grid anchor at IoU ≥ ``detector.fg_iou_thresh``;
      - ``positives_per_gt``: mean anchors the matcher makes positive for a box at IoU ≥ fg; with
        ``detector.assigner: atss``, the anchors ATSS makes positive (:func:`sod.models.assign.atss_assign`);
      - ``matched_per_gt``: the same plus the matcher's low-quality fallback (every anchor tied at the
        box's best IoU: a 6 px box inside a 32 px anchor ties with every grid position the anchor contains);
        equal to ``positives_per_gt`` under ATSS;
    and the shape-only upper bounds ``bpr``, ``mean_best_iou``, ``bpr_small``, ``bpr_medium``, ``bpr_large``
    (anchors and boxes on a common centre); plus ``num_boxes``, ``fg_iou_thresh``, ``assigner``, ``method``;
  * ``plot``: the GT box shapes at input scale on log axes, with the default and tuned anchors over them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from sod.config import Params
from sod.data import coco
from sod.errors import DataError
from sod.io import save_figure, write_json
from sod.models import anchors as anc

log = logging.getLogger(__name__)


def run(params: Params, train_json: Path, out: Path, report: Path, plot: Path) -> dict[str, Any]:
    """Run the stage; returns the report dict (also written to ``report``).

    Raises:
        DataError: unreadable JSON, a malformed image or annotation record, or no boxes at all.
    """
    acfg, dcfg = params.anchors, params.detector
    # The network's input: with an upscaling front end (detector.input_upscale) objects are factor× larger.
    min_size, max_size = dcfg.input_size()
    boxes = load_boxes(train_json, min_size, max_size)
    if len(boxes) == 0:
        raise DataError(f"{train_json}: no annotations with boxes: there is nothing to fit anchors to")
    log.info("%d boxes at input scale %d/%d px", len(boxes), min_size, max_size)

    strides = [2**lv for lv in dcfg.levels]
    default = anc.default_anchors_wh(dcfg.levels)
    # The fit runs for either method, so the report always shows what tuning buys on the grid; `method`
    # only picks which set the detector gets (the ablation's anchors levers measure whether it trains better).
    k = len(dcfg.levels) * acfg.anchors_per_level
    n_shapes = len(np.unique(boxes.wh, axis=0))
    if n_shapes < k:
        log.warning(
            "only %d distinct box shapes for %d anchors: k-means skipped, each shape is an anchor "
            "and squares over the default size range fill the rest",
            n_shapes,
            k,
        )
    tuned = anc.tune_anchors(
        boxes,
        dcfg.levels,
        acfg.anchors_per_level,
        dcfg.fg_iou_thresh,
        acfg.kmeans_iters,
        acfg.evolve_generations,
        acfg.evolve_sigma,
        acfg.seed,
        acfg.target_positives,
        acfg.fit_boxes,
    )

    def metrics(anchors_wh: list[np.ndarray]) -> dict[str, Any]:
        return {
            **anc.anchor_metrics(boxes.wh, boxes.areas, np.concatenate(anchors_wh), dcfg.fg_iou_thresh),
            **anc.grid_metrics(boxes, strides, anchors_wh, dcfg.fg_iou_thresh, dcfg.assigner, dcfg.atss_topk),
        }

    metrics_default = metrics(default)
    metrics_tuned = metrics(tuned)
    used = tuned if acfg.method == "kmeans" else default
    for name, m in (("default", metrics_default), ("tuned", metrics_tuned)):
        log.info(
            "%s anchors on the grid: BPR %s (small %s), positives per box %s (small %s)",
            name,
            m["bpr_grid"]["all"],
            m["bpr_grid"]["small"],
            m["positives_per_gt"]["all"],
            m["positives_per_gt"]["small"],
        )

    write_json(
        out,
        {
            "method": acfg.method,
            "levels": list(dcfg.levels),
            "strides": strides,
            "anchors_wh": [[[float(w), float(h)] for w, h in level] for level in used],
            "min_size": min_size,
            "max_size": max_size,
        },
    )
    result = {
        "default": metrics_default,
        "tuned": metrics_tuned,
        "num_boxes": len(boxes),
        "fg_iou_thresh": dcfg.fg_iou_thresh,
        "assigner": dcfg.assigner,
        "method": acfg.method,
    }
    write_json(report, result)
    plot_anchors(boxes.wh, default, tuned, dcfg.levels, acfg.method, metrics_default, metrics_tuned, plot)
    return result


def load_boxes(train_json: Path, min_size: int, max_size: int) -> anc.GridBoxes:
    """Every annotated box where the detector sees it: at its input scale, in its image's anchor grid.

    Args:
        train_json: a COCO file (images with ``width``/``height``; annotations with ``bbox`` xywh and ``area``;
            an annotation without ``area`` uses its bbox w·h).
        min_size, max_size: the detector's input size (``detector.min_size``/``max_size``).

    Returns:
        :class:`~sod.models.anchors.GridBoxes` in annotation order: ``boxes_xyxy`` scaled per axis as
        torchvision's transform scales them, each image's padded input size, image index, the original
        ``area`` and long side.

    Raises:
        DataError: naming the bad record (bad size, unknown image_id, malformed or empty bbox).
    """
    raw = coco.load_coco_json(train_json)
    images: dict[int, tuple[int, float, float, tuple[int, int]]] = {}  # id -> (index, ratio_w, ratio_h, input_wh)
    for i, img in enumerate(raw["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or "id" not in img:
            raise DataError(f"{train_json}: {where} is not an image record with an 'id'")
        w, h = img.get("width"), img.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            raise DataError(
                f"{train_json}: {where} (id={img['id']}) needs positive integer 'width' and 'height', got {w!r} x {h!r}"
            )
        images[img["id"]] = (
            len(images),
            *anc.input_scale(w, h, min_size, max_size),
            anc.padded_input_size(w, h, min_size, max_size),
        )
    boxes, input_wh, index, areas, long_sides = [], [], [], [], []
    for i, ann in enumerate(raw["annotations"]):
        where = f"annotations[{i}]" + (f" (id={ann.get('id')})" if isinstance(ann, dict) else "")
        if not isinstance(ann, dict):
            raise DataError(f"{train_json}: {where} is not a JSON object")
        if coco.is_crowd(ann):  # an ignore region is no target: training never matches anchors to it
            continue
        try:
            img_index, rw, rh, wh = images[ann.get("image_id")]
        except (KeyError, TypeError):  # TypeError: an unhashable image_id such as a list
            raise DataError(f"{train_json}: {where} refers to unknown image_id {ann.get('image_id')!r}") from None
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            and bbox[2] > 0
            and bbox[3] > 0
        ):
            raise DataError(
                f"{train_json}: {where} needs 'bbox' [x, y, w, h] with w, h > 0, got {bbox!r} "
                "(run `sod prepare` to clean the dataset)"
            )
        area = ann.get("area", bbox[2] * bbox[3])
        if isinstance(area, bool) or not isinstance(area, int | float) or not area >= 0:
            raise DataError(f"{train_json}: {where} has a bad 'area' {area!r}")
        x, y, bw, bh = bbox
        boxes.append((x * rw, y * rh, (x + bw) * rw, (y + bh) * rh))
        input_wh.append(wh)
        index.append(img_index)
        areas.append(float(area))
        long_sides.append(float(max(bw, bh)))
    return anc.GridBoxes(
        boxes_xyxy=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        input_wh=np.asarray(input_wh, dtype=np.int64).reshape(-1, 2),
        image_index=np.asarray(index, dtype=np.int64),
        areas=np.asarray(areas, dtype=np.float64),
        long_sides=np.asarray(long_sides, dtype=np.float64),
    )


def plot_anchors(
    boxes_wh: np.ndarray,
    default: list[np.ndarray],
    tuned: list[np.ndarray],
    levels: list[int],
    method: str,
    metrics_default: dict[str, Any],
    metrics_tuned: dict[str, Any],
    path: Path,
) -> None:
    """Scatter of GT box ``(w, h)`` at input scale (log axes) with the anchors over them, one colour per level.

    Args:
        boxes_wh: ``[N, 2]`` box shapes; default, tuned: per level ``[A, 2]`` anchor shapes (input pixels).
        levels: FPN levels as log2(stride), one per entry of ``default``/``tuned``.
        method: ``anchors.method``: the set the detector uses is marked "(used)" in the legend.
        metrics_default, metrics_tuned: the report's ``default`` and ``tuned`` entries (``bpr_grid`` for the title).
        path: the PNG to write (atomically, no timestamp in its metadata).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.scatter(boxes_wh[:, 0], boxes_wh[:, 1], s=4, c="0.6", alpha=0.4, lw=0, label="GT boxes", rasterized=True)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(levels)))
    # Torchvision's anchors as crosses, the fitted ones as outlined dots; the set the detector uses is marked.
    for name, sets, style in (
        ("default", default, {"marker": "x", "s": 40}),
        ("tuned", tuned, {"marker": "o", "s": 60, "edgecolors": "k"}),
    ):
        used = " (used)" if (method == "kmeans") == (name == "tuned") else ""
        for lv, anchors_wh, colour in zip(levels, sets, colours, strict=True):
            ax.scatter(
                anchors_wh[:, 0], anchors_wh[:, 1], color=colour, label=f"{name} P{lv} (stride {2**lv}){used}", **style
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width at input scale (px)")
    ax.set_ylabel("height at input scale (px)")
    title = (
        f"{len(boxes_wh)} GT boxes; BPR on the grid: default {metrics_default['bpr_grid']['all']:.3f}, "
        f"tuned {metrics_tuned['bpr_grid']['all']:.3f}"
    )
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
