"""``sod evaluate``: COCO AP by size of the trained detector, full-image and sliced, with curves and pictures.

Scale conventions. Each val image is first resized exactly as the detector resizes its inputs
(``detector.min_size``/``max_size``; a no-op for the embedded 320 px scenes); everything after that is
relative to this *model scale*: ``evaluate.scales`` are the full-image pyramid, and tiles of
``evaluate.sliced.tile`` px are cut from the model-scale image and kept at that scale by default
(``evaluate.sliced.upscale: null``: a tile gets the same factor as the full image, so its objects look as
they did in training); a number resizes tiles by that much more (2.0: 160 px tiles seen at 320 px, SAHI's
way, but objects at twice their training scale). The detector itself then runs without resizing again,
and boxes are mapped back to the original image pixels. A detector with an
upscaling front end (``detector.input_upscale``) upscales whatever it gets (image or tile) by its factor first.

SR's control: for a detector with SR input, the same detector is scored again with bicubic input at the same
factor (full image, under ``bicubic_input``), so the report shows what SR adds over plain upscaling.

Outputs: ``report`` (``reports/evaluate.json``: the full-image metrics at the top level, the same keys
under ``sliced``, ``max_dets``, and ``bicubic_input`` for SR input), ``per_class`` CSV, COCO-format
``detections`` of the full-image pass (re-score them with plain pycocotools and ``maxDets[-1] = max_dets``),
and under ``plots_dir``: ``pr_curves.csv/.png`` (per size bucket), ``recall_vs_size.csv/.png`` (full vs
sliced) and ``preview.png``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sod.config import Params
from sod.data.coco import image_path
from sod.engine import resolve_device
from sod.evaluation import plots
from sod.evaluation.coco_eval import CocoEvaluator
from sod.evaluation.sliced import SlicedPredictor
from sod.io import claim_dir, finish_dir, load_rgb, read_json, write_csv, write_json
from sod.models.anchors import input_scale
from sod.models.detector import load_detector
from sod.models.upscale import UpscaledDetector, bicubic_input
from sod.progress import progress_bar

log = logging.getLogger(__name__)

Prediction = dict[str, torch.Tensor]
# What run writes under plots_dir (its .sod-owner marker lists them).
PLOT_FILES = ["pr_curves.csv", "pr_curves.png", "recall_vs_size.csv", "recall_vs_size.png", "preview.png"]


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
) -> dict[str, Any]:
    """Score the model (and optionally a baseline model) on ``val_json``; returns the report."""
    ecfg = params.evaluate
    claim_dir(plots_dir, "evaluate")  # a non-empty plots_dir without evaluate's marker is refused up front
    device = resolve_device(ecfg.device)
    model, meta = load_detector(model_path, device)
    gt = read_json(val_json)
    result, extras = _score(model, meta, gt, val_json, params, device, progress, with_sliced=ecfg.sliced.enabled)
    if baseline_model is not None:
        base, base_meta = load_detector(baseline_model, device)
        result["baseline"], _ = _score(base, base_meta, gt, val_json, params, device, progress, with_sliced=False)
        result["baseline"]["model"] = str(baseline_model)

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
    plots.plot_detection_grid(extras["preview"], plots_dir / "preview.png")
    finish_dir(plots_dir, "evaluate", PLOT_FILES)
    return result


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
    predict = _native_size_predict_fn(model)
    passes: dict[str, SlicedPredictor] = {"full": SlicedPredictor.from_config(predict, ecfg, sliced=False)}
    if with_sliced:
        passes["sliced"] = SlicedPredictor.from_config(predict, ecfg, sliced=True)
    if isinstance(model, UpscaledDetector) and model.mode == "sr":  # SR's control, on the same loaded images
        passes["bicubic_input"] = SlicedPredictor.from_config(_bicubic_input_fn(model, predict), ecfg, sliced=False)
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
    with torch.inference_mode():
        for start in progress_bar(range(0, len(images), batch), desc="evaluate", unit="batch", enabled=progress):
            chunk = images[start : start + batch]
            arrays = [load_rgb(image_path(val_json, im["file_name"])) for im in chunk]
            tensors, factors = zip(*(_to_model_scale(a, dcfg, device, model) for a in arrays), strict=True)
            inputs = [{"image_id": im["id"]} for im in chunk]
            for name, predictor in passes.items():
                t0 = time.perf_counter()
                outputs = [_unscale(o, *f) for o, f in zip(predictor(list(tensors)), factors, strict=True)]
                seconds[name] += time.perf_counter() - t0
                evaluators[name].process(inputs, outputs)
                if name == "full":
                    for im, arr, out in zip(chunk, arrays, outputs, strict=True):
                        if len(preview) < ecfg.preview_images:
                            preview.append(_preview_item(im, arr, out, anns_by_image.get(im["id"], []), meta))
    result = evaluators["full"].evaluate()
    for name in passes:  # the full-image metrics at the top level, the other passes under their names
        section = result if name == "full" else result.setdefault(name, evaluators[name].evaluate())
        section["images_per_s"] = round(len(images) / seconds[name], 2) if seconds[name] else None
    return result, {**evaluators, "preview": preview}


def _to_model_scale(
    rgb: np.ndarray, dcfg: dict[str, Any], device: torch.device, model: torch.nn.Module | None = None
) -> tuple[torch.Tensor, tuple[float, float]]:
    """``(H, W, 3) uint8`` → ``float Tensor[3, h, w]`` in 0..1 at the detector's input scale, and the box
    factors ``(fx, fy)`` of that resize.

    An upscaling front end resizes as it did in training (its :meth:`~UpscaledDetector.native`), so the SR
    network sees low-resolution images made the way it was trained on.
    """
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().div_(255)
    if isinstance(model, UpscaledDetector):
        return model.native(x)
    fx, _ = input_scale(w, h, dcfg["min_size"], dcfg["max_size"])
    if fx != 1.0:
        x = F.interpolate(x[None], scale_factor=fx, mode="bilinear", align_corners=False, antialias=fx < 1)[0]
    return x, (fx, fx)  # one scale factor for both axes


def _unscale(out: Prediction, fx: float, fy: float) -> Prediction:
    if fx == fy == 1.0:
        return out
    return {**out, "boxes": out["boxes"] / out["boxes"].new_tensor([fx, fy, fx, fy])}


def _bicubic_input_fn(
    model: UpscaledDetector, predict: Callable[[Sequence[torch.Tensor]], list[Prediction]]
) -> Callable[[Sequence[torch.Tensor]], list[Prediction]]:
    """``predict`` with bicubic instead of SR in front of ``model``: the same weights, SR's control."""

    def run(images: Sequence[torch.Tensor]) -> list[Prediction]:
        with bicubic_input(model):
            return predict(images)

    return run


def _native_size_predict_fn(model: torch.nn.Module) -> Callable[[Sequence[torch.Tensor]], list[Prediction]]:
    """A predict function that runs ``model`` on its inputs at the size they come in.

    torchvision detectors resize every input to ``min_size``; here inputs of one shape share a call with
    ``min_size``/``max_size`` set to that shape, so the resize is the identity and the caller decides scale.
    Detections of label 0 (no class) are dropped.
    """

    def predict(images: Sequence[torch.Tensor]) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape[-2:]), []).append(i)
        for (h, w), idx in by_shape.items():
            with _transform_size(model, min(h, w), max(h, w)):
                for i, o in zip(idx, model([images[i] for i in idx]), strict=True):
                    # Label 0 is no class, but torchvision's RetinaNet scores it like the others (its logit only
                    # ever sees negatives) and returns it above a low score_thresh: drop it here.
                    keep = o["labels"] > 0
                    out[i] = {k: v[keep] for k, v in o.items()}
        return out  # type: ignore[return-value]

    return predict


@contextmanager
def _transform_size(model: torch.nn.Module, min_size: int, max_size: int):
    t = model.transform
    saved = (t.min_size, t.max_size)
    if isinstance(model, UpscaledDetector):  # inputs stay as they are, then the network sees them f× larger
        front = (model.min_size, model.max_size)
        model.min_size, model.max_size = min_size, max_size
        min_size, max_size = min_size * model.input_factor, max_size * model.input_factor
    t.min_size, t.max_size = (min_size,), max_size
    try:
        yield
    finally:
        t.min_size, t.max_size = saved
        if isinstance(model, UpscaledDetector):
            model.min_size, model.max_size = front


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
