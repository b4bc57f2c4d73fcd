"""``sod evaluate``: COCO AP by size of the trained detector, full-image and sliced, with curves and pictures.

Every val image is read at its original size and handed to :class:`~sod.evaluation.predictor.Predictor`,
which owns the scales: the full-image pass resizes it as the detector does (``detector.min_size``/
``max_size``; a no-op for the embedded 320 px scenes), ``evaluate.scales`` are the pyramid relative to that,
and the sliced pass cuts ``evaluate.sliced.tile`` px tiles from the original pixels and resizes each by the
full image's factor (``evaluate.sliced.upscale: null``: objects look as they did in training), or that many
times more. Boxes come back in the original pixels and are scored against the full-image ground truth.

SR's control: for a detector with SR input, the same detector is scored again with bicubic input at the same
factor (full image, under ``bicubic_input``), so the report shows what SR adds over plain upscaling.

Outputs: ``report`` (``reports/evaluate.json``: the full-image metrics at the top level, the same keys
under ``sliced``, ``max_dets``, and ``bicubic_input`` for SR input; every pass has COCO's size buckets and
AI-TOD's, ``AP_vt/AP_t/AP_s16`` and ``AR_vt/AR_t/AR_s16``, see :mod:`sod.evaluation.coco_eval`),
``per_class`` CSV (AP per category, COCO's and AI-TOD's buckets), COCO-format
``detections`` of the full-image pass (re-score them with plain pycocotools and ``maxDets[-1] = max_dets``),
``errors`` (``reports/errors.json``: the TIDE error breakdown per size bucket of the full-image pass and, when
it ran, the sliced pass; see :mod:`sod.evaluation.errors`), and under ``plots_dir``: ``pr_curves.csv/.png``
(per size bucket), ``recall_vs_size.csv/.png`` (full vs sliced), ``errors.csv/.png`` (dAP50 per error type
and size bucket) and ``preview.png``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sod.config import Params
from sod.data.coco import image_path
from sod.engine import resolve_device
from sod.evaluation import errors as tide
from sod.evaluation import plots
from sod.evaluation.coco_eval import CocoEvaluator
from sod.evaluation.predictor import Predictor, config_mode, image_tensor, train_tile
from sod.io import claim_dir, finish_dir, load_rgb, read_json, write_csv, write_json
from sod.models.detector import load_detector
from sod.models.upscale import UpscaledDetector
from sod.progress import progress_bar

log = logging.getLogger(__name__)

Prediction = dict[str, torch.Tensor]
# What run writes under plots_dir (its .sod-owner marker lists them).
PLOT_FILES = [
    "pr_curves.csv", "pr_curves.png", "recall_vs_size.csv", "recall_vs_size.png", "errors.csv", "errors.png",
    "preview.png",
]  # fmt: skip
# The passes whose errors reports/errors.json breaks down (bicubic_input and baseline are controls).
ERROR_PASSES = ("full", "sliced")


def run(
    params: Params,
    model_path: Path,
    val_json: Path,
    report: Path,
    per_class: Path,
    detections: Path,
    plots_dir: Path,
    baseline_model: Path | None = None,
    progress: bool = True,
    errors: Path | None = None,
) -> dict[str, Any]:
    """Score the model (and optionally a baseline model) on ``val_json``; returns the report, plus its
    passes' speeds under ``timing`` (``full_images_per_s``, ``sliced_images_per_s``, ..., not in the file).

    ``errors``: where to write the TIDE breakdown JSON (None: only its CSV and figure under ``plots_dir``).
    """
    ecfg = params.evaluate
    claim_dir(plots_dir, "evaluate")  # a non-empty plots_dir without evaluate's marker is refused up front
    device = resolve_device(ecfg.device)
    model, meta = load_detector(model_path, device)
    gt = read_json(val_json)
    result, extras = _score(model, meta, gt, val_json, params, device, progress, with_sliced=ecfg.sliced.enabled)
    timing = extras["timing"]
    if baseline_model is not None:
        base, base_meta = load_detector(baseline_model, device)
        result["baseline"], base_extras = _score(
            base, base_meta, gt, val_json, params, device, progress, with_sliced=False
        )
        result["baseline"]["model"] = str(baseline_model)
        timing["baseline_images_per_s"] = base_extras["timing"]["full_images_per_s"]

    write_json(report, result)
    full_eval: CocoEvaluator = extras["full"]
    write_csv(per_class, full_eval.per_class_table())
    write_json(detections, full_eval.detections())
    pr = full_eval.pr_curves()
    write_csv(plots_dir / "pr_curves.csv", pr)
    plots.plot_pr_curves(pr, plots_dir / "pr_curves.png")
    sliced_eval: CocoEvaluator | None = extras.get("sliced")
    rs = recall_vs_size_table(full_eval.recall_vs_size(), sliced_eval.recall_vs_size() if sliced_eval else None)
    write_csv(plots_dir / "recall_vs_size.csv", rs)
    plots.plot_recall_vs_size(rs, plots_dir / "recall_vs_size.png")
    breakdowns = {
        name: tide.error_breakdown(ev.coco_gt, ev.detections(), ev.image_ids, ev.max_dets)
        for name in ERROR_PASSES
        if (ev := extras.get(name)) is not None
    }
    if errors is not None:
        write_json(errors, breakdowns)
    table = tide.errors_table(breakdowns)
    write_csv(plots_dir / "errors.csv", table)
    tide.plot_errors(table, plots_dir / "errors.png")
    plots.plot_detection_grid(extras["preview"], plots_dir / "preview.png")
    finish_dir(plots_dir, "evaluate", PLOT_FILES)
    return {**result, "timing": timing}


def recall_vs_size_table(full: pd.DataFrame, sliced: pd.DataFrame | None) -> pd.DataFrame:
    """The ``recall_vs_size.csv`` table: full-image and sliced recall per size bin, side by side.

    Args:
        full, sliced: :meth:`CocoEvaluator.recall_vs_size` of the full-image and the sliced pass (columns
            ``size_min, size_max, gt_instances, matched, recall``); ``sliced`` None when sliced inference is off.

    Returns:
        columns ``size_min, size_max, gt_instances, matched_full, recall_full`` and, with ``sliced``,
        ``matched_sliced, recall_sliced``; one row per bin of ``full``.
    """
    rs = full.rename(columns={"matched": "matched_full", "recall": "recall_full"})
    if sliced is None:
        return rs
    # Both passes score the same GT, so their bins are the same; join on the bin edges all the same, so a bin
    # can never pair with another bin's recall.
    sliced = sliced.rename(columns={"matched": "matched_sliced", "recall": "recall_sliced"})
    return rs.merge(
        sliced[["size_min", "size_max", "matched_sliced", "recall_sliced"]], on=["size_min", "size_max"], how="left"
    )


def _score(
    model: torch.nn.Module,
    meta: dict[str, Any],
    gt: dict[str, Any],
    val_json: Path,
    params: Params,
    device: torch.device,
    progress: bool,
    with_sliced: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    ecfg, dcfg = params.evaluate, meta["detector"]
    if dcfg["detections_per_img"] > ecfg.max_dets:
        log.warning(
            "detector.detections_per_img = %d exceeds evaluate.max_dets = %d: only the best %d per image count",
            dcfg["detections_per_img"], ecfg.max_dets, ecfg.max_dets,
        )  # fmt: skip
    passes = {"full": Predictor.from_config(model, ecfg, "full")}
    if with_sliced:  # tiles at the scale training showed objects: train_tile when training was sliced
        passes["sliced"] = Predictor.from_config(
            model, ecfg, config_mode(ecfg, sliced=True), train_tile=train_tile(params)
        )
    if isinstance(model, UpscaledDetector) and model.mode == "sr":  # SR's control, on the same loaded images
        passes["bicubic_input"] = Predictor.from_config(model, ecfg, "full", bicubic_input=True)
    evaluators = {
        name: CocoEvaluator(val_json, ecfg.max_dets, meta["label_to_category"], ecfg.score_thresh) for name in passes
    }
    seconds = dict.fromkeys(passes, 0.0)
    preview: list[plots.PreviewItem] = []
    images = sorted(gt["images"], key=lambda im: im["id"])
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    for a in gt["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    batch = max(1, ecfg.batch_size)
    for start in progress_bar(range(0, len(images), batch), desc="evaluate", unit="batch", enabled=progress):
        chunk = images[start : start + batch]
        arrays = [load_rgb(image_path(val_json, im["file_name"])) for im in chunk]
        tensors = [image_tensor(a, device) for a in arrays]  # original size: the Predictor owns the scales
        inputs = [{"image_id": im["id"]} for im in chunk]
        for name, predictor in passes.items():
            t0 = time.perf_counter()
            outputs = predictor(tensors)
            seconds[name] += time.perf_counter() - t0
            evaluators[name].process(inputs, outputs)
            if name == "full":
                for im, arr, out in zip(chunk, arrays, outputs, strict=True):
                    if len(preview) < ecfg.preview_images:
                        preview.append(_preview_item(im, arr, out, anns_by_image.get(im["id"], []), meta))
    result = evaluators["full"].evaluate()
    for name in passes:  # the full-image metrics at the top level, the other passes under their names
        if name != "full":
            result[name] = evaluators[name].evaluate()
    # Speeds are not part of the report (a DVC output in git: the same model must give the same file); they
    # are logged and returned under "timing" (logged to MLflow by sod.tracking).
    timing = {f"{name}_images_per_s": round(len(images) / s, 2) if s else None for name, s in seconds.items()}
    log.info("evaluate speed: %s", ", ".join(f"{k} {v}" for k, v in timing.items()))
    return result, {**evaluators, "preview": preview, "timing": timing}


def _preview_item(
    im: dict[str, Any], rgb: np.ndarray, out: Prediction, anns: list[dict[str, Any]], meta: dict[str, Any]
) -> plots.PreviewItem:
    gt_xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_xyxy = np.concatenate([gt_xywh[:, :2], gt_xywh[:, :2] + gt_xywh[:, 2:]], axis=1)
    l2c = meta["label_to_category"]
    return plots.PreviewItem(
        image=rgb,
        gt_boxes_xyxy=gt_xyxy,
        pred_boxes_xyxy=out["boxes"].cpu().numpy(),
        pred_scores=out["scores"].cpu().numpy(),
        gt_labels=np.array([a["category_id"] for a in anns], dtype=np.int64),
        pred_labels=np.array([l2c.get(int(v), -1) for v in out["labels"].cpu()], dtype=np.int64),
        gt_areas=np.array([a["area"] for a in anns], dtype=np.float64),
        title=f"image {im['id']}",
    )
