"""Sliced inference: sod's batched tiles against SAHI's ``get_sliced_prediction`` with the same detector.

Both slice every image into the same tiles (``evaluate.sliced.tile``/``overlap``), run the trained detector,
add the full-image prediction, and merge the same way (``evaluate.sliced.merge``/``match``/``match_thresh``,
class-aware). Each input is resized by the factor sod's Predictor gives it, SAHI's included (its torchvision
wrapper's ``image_size`` is set per input to that factor times the input's long side), so both see every tile
and full image at the same pixel scale. The table gives images/s, the ratio sod / SAHI (target ≥ 3×), and
AP / AP_small of both from the same pycocotools evaluator (sod's must not be more than 0.01 below SAHI's:
skipping tiles may not cost accuracy; being above is no failure — sod antialiases the inputs it shrinks,
torchvision's transform behind SAHI's wrapper does not, which shows once the full image is shrunk 2× or
more). sod runs with ``select: all`` (every tile, SAHI's work) and ``select: small`` (one tile per small
full-image candidate); the forward passes are the whole cost on a CPU, so beyond batching and the folded norms
(below) a gain there can only come from ``small``.

Two cases (``--case``, default both):

* ``default``: the first ``--images`` val images of ``data/prepared/val.json`` (320 px scenes: 9 tiles each).
* ``large``: ``--large-images`` embedded scenes of ``--large-size`` px (default 1,280) with the ``clusters``
  layout, the usual 6–170 px objects in a few clusters and most of the scene empty ground, generated into a
  temporary folder with ``sod.data.embedded`` from ``params.yaml``'s ``data.embedded`` (seed ``--large-seed``,
  not the training seed; nothing under DVC is touched). The full image shrinks 4× to the detector's 320 px,
  so the tiles run at the scale the detector trained on: the side of its (unsliced) training scenes is passed
  as ``train_tile``, and a 160 px tile runs at 160 px (SAHI's wrapper too). 1,280 px: 121 tiles an image.
  Its summary goes to the ``large_scene`` entry of the result file (``ratio`` = sod ``select: small`` / SAHI
  images/s, the AP cost of skipping tiles = ``select: all`` − ``select: small``). The full-image pass of every
  method (SAHI's standard prediction; sod's, which ``select: small`` uses as its probe) runs at
  ``--large-full-scale`` times the detector's input factor (``evaluate.scales: [1.5]`` in params terms):
  at the 4× shrink of the detector's own input size the probe loses the small objects it should find tiles
  for. ``select: small`` runs, for each candidate scoring ≥ ``--large-select-score``
  (``evaluate.sliced.select_score``), the one tile that holds it farthest from its border: small boxes of the
  probe, and the cells of its finest (stride-4) level whose max class probability reaches it (the RetinaNet
  head's map, read from the same forward pass), which see objects too small for the probe to box. The defaults,
  1.5 and 0.075, were picked on scenes of ``--large-seed 2``, not on the bench's own seed-1 scenes: the lowest
  score tried (0.15, 0.1, 0.075, 0.05) whose AP_small there matched ``select: all``'s.

  sod's Predictor folds the detector's frozen batch norms into its convolutions
  (:func:`~sod.models.fusion.fold_batch_norm`, as Ultralytics' ``predict`` does); SAHI runs the model as a user
  hands it over. A second SAHI run given the folded model (``sahi_folded``, row "SAHI given the folded model",
  ``ratio_vs_sahi_folded``) shows how much of the ratio is that folding and how much is tiles and batching.

Needs the `bench` extra (``pip install -e '.[bench]'``) and a trained ``models/detector.pt``. ``--device``
picks CPU or CUDA (default: CUDA when available); both methods run on the same device. Writes
``bench/results/sliced.json``.

    python bench/sliced.py --images 40 --large-images 8 [--device cuda] [--case large]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import add_results_arg, machine_info, row, write_result  # noqa: E402
from sod.config import EvaluateConfig, Params, load_params  # noqa: E402
from sod.data.coco import image_path  # noqa: E402
from sod.engine import resolve_device  # noqa: E402
from sod.evaluation.coco_eval import CocoEvaluator  # noqa: E402
from sod.evaluation.predictor import Predictor, image_tensor  # noqa: E402
from sod.io import load_rgb, read_json  # noqa: E402
from sod.models.detector import load_detector  # noqa: E402
from sod.models.fusion import fold_batch_norm  # noqa: E402

SPEED_TARGET = 3.0  # sod images/s ≥ 3× SAHI's
AP_TOLERANCE = 0.01  # AP_small sod ≥ AP_small SAHI − this


@dataclass
class Run:
    """One method on one case: wall seconds, COCO metrics, tiles run (detector inputs besides full images)."""

    name: str  # "sahi", "all" or "small"
    seconds: float
    metrics: dict[str, Any]
    tiles: int


@dataclass
class Case:
    """Images to predict (``(H, W, 3) uint8`` RGB each), their COCO ids and ground truth, how to size tiles."""

    name: str
    gt_path: Path
    images: list[np.ndarray]
    image_ids: list[int]
    train_tile: int | None  # Predictor's train_tile (None: tiles resized like the full image)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


def _predictor(model, cfg: EvaluateConfig, select: str, train_tile: int | None) -> Predictor:
    return Predictor.from_config(model, cfg, "adaptive" if select == "small" else "sliced", train_tile=train_tile)


def _counted(fn: Callable[[list[torch.Tensor]], Any], counter: list[int]) -> Callable[[list[torch.Tensor]], Any]:
    """``fn`` that adds the number of inputs of each call to ``counter[0]``."""

    def run(inputs: list[torch.Tensor]) -> Any:
        counter[0] += len(inputs)
        return fn(inputs)

    return run


def sahi_predict(
    model, meta: dict, case: Case, cfg: EvaluateConfig, device: torch.device
) -> tuple[list[dict], float, int]:
    """SAHI's ``get_sliced_prediction`` on every image of ``case``, one image at a time, as SAHI runs.

    Returns:
        Per image ``{"boxes": Tensor[N, 4] xyxy image px, "scores", "labels"}`` (model labels), the wall
        seconds, and the tiles run (detector inputs other than the full image).
    """
    try:
        from sahi.models.torchvision import TorchVisionDetectionModel
        from sahi.predict import get_sliced_prediction
    except ImportError as exc:
        sys.exit(f"bench/sliced.py needs SAHI: pip install -e '.[bench]' ({exc})")

    # The factors sod gives each input, read from a Predictor before SAHI changes the model's resize sizes.
    engine = _predictor(model, cfg, "all", case.train_tile).engine
    if len(engine.scales) != 1:
        sys.exit(f"bench/sliced.py: SAHI runs one full-image pass; evaluate.scales has {list(engine.scales)}")

    class ScaledTorchVision(TorchVisionDetectionModel):
        """SAHI's torchvision wrapper, its ``image_size`` set per input so the input is resized by sod's
        factor: the full image's (``engine.image_scale``) for the full image, the tiles' (``tile_scale``)."""

        full_hw: tuple[int, int] = (0, 0)
        tiles_run = 0

        def perform_inference(self, image: np.ndarray, image_size: int | None = None) -> None:
            h, w = image.shape[:2]
            H, W = self.full_hw
            full = (h, w) == (H, W)
            factor = engine.image_scale(H, W) * engine.scales[0] if full else engine.tile_scale(H, W)
            # SAHI resizes the long side to image_size (torchvision's transform, bilinear).
            self.image_size = max(h, w) * factor
            self.tiles_run += not full
            super().perform_inference(image)

    names = {c["id"]: c["name"] for c in meta["categories"]}
    mapping = {str(label): names[cat] for label, cat in meta["label_to_category"].items()}
    mapping["0"] = "__no_class__"  # RetinaNet scores its unused label 0 too; excluded below, as sod drops it
    detector = ScaledTorchVision(
        model=model,
        confidence_threshold=meta["detector"]["score_thresh"],
        image_size=None,
        device=str(device),
        category_mapping=mapping,
        load_at_init=True,
    )
    transform = model.transform
    saved = (transform.min_size, transform.max_size)  # SAHI's wrapper overwrites them for good
    sl = cfg.sliced
    outputs = []
    try:
        _sync(device)
        t0 = time.perf_counter()
        for rgb in case.images:
            detector.full_hw = tuple(rgb.shape[:2])
            res = get_sliced_prediction(
                rgb,
                detector,
                slice_height=sl.tile,
                slice_width=sl.tile,
                overlap_height_ratio=sl.overlap,
                overlap_width_ratio=sl.overlap,
                perform_standard_pred=sl.include_full,
                postprocess_type={"nms": "NMS", "greedy_nmm": "GREEDYNMM"}[sl.merge],
                postprocess_match_metric=sl.match.upper(),
                postprocess_match_threshold=sl.match_thresh,
                postprocess_class_agnostic=False,
                exclude_classes_by_id=[0],
                verbose=0,
            )
            preds = res.object_prediction_list
            outputs.append(
                {
                    "boxes": torch.tensor([p.bbox.to_xyxy() for p in preds], dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor([p.score.value for p in preds], dtype=torch.float32),
                    "labels": torch.tensor([int(p.category.id) for p in preds], dtype=torch.int64),
                }
            )
        _sync(device)
        secs = time.perf_counter() - t0
    finally:
        transform.min_size, transform.max_size = saved
    return outputs, secs, detector.tiles_run


def sod_predict(
    model, case: Case, cfg: EvaluateConfig, select: str, device: torch.device
) -> tuple[list[dict], float, int]:
    """sod's Predictor (``select`` all = mode sliced, small = adaptive) on ``case``, ``cfg.batch_size`` images
    a step. Returns the outputs (as :func:`sahi_predict`), wall seconds and tiles run (detector inputs less
    the full-image passes, ``len(cfg.scales)`` an image, which ``select: small`` runs even without
    ``include_full``)."""
    predictor = _predictor(model, cfg, select, case.train_tile)
    counter = [0]
    # The probe round of select=small goes through probe_fn (the same forward, also reading the head's map).
    predictor.engine.predict_fn = _counted(predictor.engine.predict_fn, counter)
    predictor.engine.probe_fn = _counted(predictor.engine.probe_fn, counter)
    outputs = []
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(case.images), cfg.batch_size):
        chunk = [image_tensor(a, device) for a in case.images[start : start + cfg.batch_size]]
        outputs.extend({k: v.cpu() for k, v in o.items()} for o in predictor(chunk))
    _sync(device)
    secs = time.perf_counter() - t0
    full = len(cfg.scales) if cfg.sliced.include_full or select == "small" else 0
    return outputs, secs, counter[0] - full * len(case.images)


def run_case(
    model, meta: dict, case: Case, cfg: EvaluateConfig, selects: Sequence[str], device: torch.device
) -> list[Run]:
    """SAHI, SAHI given the folded model, then sod for each of ``selects``, scored by one CocoEvaluator setup.

    Runs are named ``sahi`` (the peer: the model as a user hands it to SAHI), ``sahi_folded`` (SAHI with the
    copy whose batch norms sod's Predictor folds, :func:`~sod.models.fusion.fold_batch_norm`: how much of the
    ratio that folding is) and the selects.
    """
    inputs = [{"image_id": i} for i in case.image_ids]

    def score(outputs: list[dict]) -> dict:
        ev = CocoEvaluator(case.gt_path, cfg.max_dets, meta["label_to_category"])
        ev.process(inputs, outputs)
        return ev.evaluate()

    # Warm-up (untimed): one image through sod's cheapest mode, so no method pays the first calls' setup.
    sod_predict(model, replace(case, images=case.images[:1]), cfg, "small", device)
    runs = []
    for name, peer_model in (("sahi", model), ("sahi_folded", fold_batch_norm(model)[0])):
        out, secs, n = sahi_predict(peer_model, meta, case, cfg, device)
        runs.append(Run(name, secs, score(out), n))
    for select in selects:
        out, secs, n = sod_predict(model, case, cfg, select, device)
        runs.append(Run(select, secs, score(out), n))
    return runs


def _sod_runs(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if not r.name.startswith("sahi")]


# ------------------------------------------------------------------------------------------------- cases
def default_case(val: Path, images: int) -> Case:
    gt = read_json(val)
    ims = sorted(gt["images"], key=lambda im: im["id"])[:images]
    rgb = [load_rgb(image_path(val, im["file_name"])) for im in ims]
    return Case("default", val, rgb, [im["id"] for im in ims], train_tile=None)


def training_side(params: Params) -> int:
    """The side of the scenes the detector trained on (embedded data): ``data.embedded.image_size``, or
    ``prepare.slice.tile`` when slicing cut them into tiles. Passed as ``train_tile`` so the tiles of a larger
    scene are resized as the training scenes were (by 1 for the 320 px default: a 160 px tile runs at 160)."""
    side = params.data.embedded.image_size
    sl = params.prepare.slice
    return min(side, sl.tile) if sl.enabled else side


def large_case(params_path: Path, overrides: list[str], out_dir: Path, images: int, size: int, seed: int) -> Case:
    """``images`` embedded scenes of ``size`` px, clusters layout, written to ``out_dir`` (no DVC)."""
    from sod.data.embedded import build_embedded

    params = load_params(params_path)
    if params.data.source != "embedded":
        sys.exit("--case large builds embedded scenes: it needs a detector trained on data.source: embedded")
    scenes = load_params(
        params_path,
        [
            *overrides,
            f"data.embedded.image_size={size}",
            "data.embedded.layout=clusters",
            f"data.embedded.images={images}",
            f"data.embedded.seed={seed}",
        ],
    ).data.embedded
    ann_path, images_root = build_embedded(scenes, out_dir)
    gt = read_json(ann_path)
    ims = sorted(gt["images"], key=lambda im: im["id"])
    rgb = [load_rgb(images_root / im["file_name"]) for im in ims]
    return Case("large", ann_path, rgb, [im["id"] for im in ims], train_tile=training_side(params))


# ------------------------------------------------------------------------------------------------- report
def _ips(run: Run, images: int) -> float:
    return images / run.seconds


def _ap_small_ok(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a >= b - AP_TOLERANCE


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def large_scene_summary(runs: Sequence[Run], images: int, image_size: int, tile_scale: float) -> dict[str, Any]:
    """The ``large_scene`` entry: sod ``select: small`` against SAHI, and what skipping tiles cost.

    Args:
        runs: ``sahi``, ``sahi_folded``, sod's ``all`` and ``small`` (all four needed).
        images: images each method ran.
        image_size: the scenes' side, px.
        tile_scale: the factor tiles were resized by (1.0: tiles at their original pixels).

    Returns:
        ``ratio`` (sod small / SAHI images/s), ``ratio_select_all``, ``ratio_vs_sahi_folded`` (sod small / SAHI
        given the folded model), ``sahi_folded_images_per_s``, ``sod_images_per_s``,
        ``sod_all_images_per_s``, ``sahi_images_per_s``, ``sod_AP``/``sod_AP_small`` (small),
        ``sod_all_AP``/``sod_all_AP_small``, ``sahi_AP``/``sahi_AP_small``, ``tiles_per_image`` (per method:
        ``sahi``, ``all``, ``small``), ``skip_cost`` (``AP``/``AP_small`` of all − small),
        ``met`` (ratio ≥ 3× and AP_small at most 0.01 below SAHI's), ``images``, ``image_size``, ``tile_scale``.
    """
    by = {r.name: r for r in runs}
    sahi, folded, every, small = by["sahi"], by["sahi_folded"], by["all"], by["small"]
    ratio = _ips(small, images) / _ips(sahi, images)
    ap_ok = _ap_small_ok(small.metrics["AP_small"], sahi.metrics["AP_small"])
    return {
        "images": images,
        "image_size": image_size,
        "tile_scale": tile_scale,
        "ratio": ratio,
        "ratio_select_all": _ips(every, images) / _ips(sahi, images),
        "ratio_vs_sahi_folded": _ips(small, images) / _ips(folded, images),
        "sahi_folded_images_per_s": _ips(folded, images),
        "sod_images_per_s": _ips(small, images),
        "sod_all_images_per_s": _ips(every, images),
        "sahi_images_per_s": _ips(sahi, images),
        "sod_AP": small.metrics["AP"],
        "sod_AP_small": small.metrics["AP_small"],
        "sod_all_AP": every.metrics["AP"],
        "sod_all_AP_small": every.metrics["AP_small"],
        "sahi_AP": sahi.metrics["AP"],
        "sahi_AP_small": sahi.metrics["AP_small"],
        "tiles_per_image": {r.name: r.tiles / images for r in (sahi, every, small)},
        "skip_cost": {
            "AP": _diff(every.metrics["AP"], small.metrics["AP"]),
            "AP_small": _diff(every.metrics["AP_small"], small.metrics["AP_small"]),
        },
        "met": bool(ratio >= SPEED_TARGET and ap_ok),
    }


def case_rows(runs: Sequence[Run], images: int, prefix: str = "") -> list[dict[str, Any]]:
    """Result rows of one case: images/s and AP_small of each sod mode against SAHI, then tiles per image.

    ``prefix`` names the case in each row's measure (``"1280 px scenes: "``; empty for the default case).
    """
    sahi, folded = runs[0], runs[1]
    peer_ips = _ips(sahi, images)
    # What folding the norms alone buys SAHI: the part of sod's ratio that is not tiles or batching.
    rows = [row(f"{prefix}images/s, SAHI given the folded model", "images/s", _ips(folded, images), peer_ips)]
    for r in _sod_runs(runs):
        ips = _ips(r, images)
        rows.append(row(f"{prefix}images/s, select={r.name}", "images/s", ips, peer_ips,
                        target=f"≥ {SPEED_TARGET:g}×", met=ips >= SPEED_TARGET * peer_ips))  # fmt: skip
    for r in _sod_runs(runs):
        a, b = r.metrics["AP_small"], sahi.metrics["AP_small"]
        rows.append(row(f"{prefix}AP_small, select={r.name}", "AP_small", a, b,
                        target=f"≥ peer − {AP_TOLERANCE:g}", met=_ap_small_ok(a, b), ratio=None))  # fmt: skip
    for r in _sod_runs(runs):
        rows.append(row(f"{prefix}tiles per image, select={r.name}", "tiles", r.tiles / images, sahi.tiles / images))
    return rows


def _print_case(case: Case, runs: Sequence[Run], header: str) -> None:
    images = len(case.images)
    peer_ips = _ips(runs[0], images)
    print(header)
    print(f"{'method':<38}{'images/s':>9}{'ratio':>7}{'tiles/im':>9}{'AP':>8}{'AP_small':>10}")
    for r in runs:
        name = {"sahi": "SAHI get_sliced_prediction (peer)", "sahi_folded": "SAHI, model with folded norms"}.get(
            r.name, f"sod Predictor select={r.name}"
        )
        ips = _ips(r, images)
        ap, aps = r.metrics["AP"] or 0, r.metrics["AP_small"] or 0
        print(f"{name:<38}{ips:>9.3f}{ips / peer_ips:>7.2f}{r.tiles / images:>9.1f}{ap:>8.4f}{aps:>10.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models/detector.pt")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--val", type=Path, default=ROOT / "data/prepared/val.json")
    ap.add_argument("--case", choices=["default", "large"], action="append", default=None,
                    help="cases to run (default: both; the result file holds only the cases run)")  # fmt: skip
    ap.add_argument("--images", type=int, default=40, help="default case: val images (default: %(default)s)")
    ap.add_argument("--large-images", type=int, default=8, help="large case: scenes (default: %(default)s)")
    ap.add_argument("--large-size", type=int, default=1280, help="large case: scene side, px (default: %(default)s)")
    ap.add_argument("--large-seed", type=int, default=1,
                    help="large case: data.embedded.seed (default: %(default)s; not the training seed)")  # fmt: skip
    ap.add_argument("--large-full-scale", type=float, default=1.5,
                    help="large case: full-image pass (SAHI's and sod's, select=small's probe) at this times the "
                         "detector's input factor, i.e. evaluate.scales (default: %(default)s)")  # fmt: skip
    ap.add_argument("--large-select-score", type=float, default=0.075,
                    help="large case, select=small: evaluate.sliced.select_score (default: %(default)s)")  # fmt: skip
    ap.add_argument("--select", choices=["all", "small"], action="append", default=None,
                    help="sod tile selection modes to time (default: all and small; large needs both)")  # fmt: skip
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where both methods run (default: %(default)s = CUDA when available)")  # fmt: skip
    add_results_arg(ap)
    args = ap.parse_args()
    cases = args.case or ["default", "large"]
    selects = args.select or ["all", "small"]
    if "large" in cases and set(selects) != {"all", "small"}:
        ap.error("--case large reports the cost of select=small against select=all: run both selects")
    if args.large_images < 2:
        ap.error("--large-images must be ≥ 2 (data.embedded.images)")
    if args.large_full_scale <= 0 or not 0 <= args.large_select_score <= 1:
        ap.error("--large-full-scale must be > 0 and --large-select-score in [0, 1]")
    if not args.model.is_file():
        sys.exit(f"{args.model} not found: bench/sliced.py needs the trained detector (`dvc repro train_detector`)")

    cfg = load_params(args.params).evaluate
    device = resolve_device(args.device)
    model, meta = load_detector(args.model, device)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    sl = cfg.sliced
    results: list[dict[str, Any]] = []
    details: dict[str, Any] = {"model": str(args.model), "seconds": {}}
    extra: dict[str, Any] = {}

    if "default" in cases:
        case = default_case(args.val, args.images)
        runs = run_case(model, meta, case, cfg, selects, device)
        n = len(case.images)
        _print_case(case, runs, f"{n} val images, tile {sl.tile} px, overlap {sl.overlap}, upscale {sl.upscale}, "
                                f"batch {sl.batch_size}, device {device}{threads}")  # fmt: skip
        results += case_rows(runs, n)
        details["images"] = n
        details["seconds"]["default"] = {r.name: round(r.seconds, 3) for r in runs}

    if "large" in cases:
        # Tiles at their original pixels: upscale null, the scale coming from train_tile (see the docstring).
        large_sl = replace(sl, upscale=None, select_score=args.large_select_score)
        large_cfg = replace(cfg, sliced=large_sl, scales=[args.large_full_scale])
        with tempfile.TemporaryDirectory(prefix="sod-bench-large-") as tmp:
            case = large_case(args.params, [], Path(tmp), args.large_images, args.large_size, args.large_seed)
            runs = run_case(model, meta, case, large_cfg, ["all", "small"], device)
        n = len(case.images)
        size = args.large_size
        tile_scale = _predictor(model, large_cfg, "all", case.train_tile).engine.tile_scale(size, size)
        summary = large_scene_summary(runs, n, size, tile_scale)
        summary |= {"full_scale": args.large_full_scale, "select_score": large_sl.select_score}
        probe = f"full pass at {args.large_full_scale:g}x, select=small score ≥ {large_sl.select_score:g}"
        _print_case(case, runs, f"{n} embedded scenes of {size} px (clusters, seed {args.large_seed}), tile "
                                f"{sl.tile} px at scale {tile_scale:g}, {probe}, device {device}{threads}")  # fmt: skip
        cost = summary["skip_cost"]
        print(f"ratio sod(small)/SAHI {summary['ratio']:.2f}×; AP cost of skipping tiles (all − small): "
              f"AP {cost['AP'] or 0:+.4f}, AP_small {cost['AP_small'] or 0:+.4f}")  # fmt: skip
        results += case_rows(runs, n, prefix=f"{size} px scenes: ")
        results.append(row(f"{size} px scenes: AP_small cost of select=small (all − small)", "AP_small",
                           cost["AP_small"], None, ratio=None))  # fmt: skip
        extra["large_scene"] = {k: _round_tree(v) for k, v in summary.items()}
        details["seconds"]["large"] = {r.name: round(r.seconds, 3) for r in runs}

    write_result(
        "sliced",
        results,
        sod=f"sod Predictor, batched tiles (tile {sl.tile} px, batch {sl.batch_size}; select all and small)",
        peer=f"SAHI get_sliced_prediction, same detector, tiles, input scales and merge ({sl.merge} on {sl.match})",
        target=f"ratio ≥ {SPEED_TARGET:g}×, AP_small ≥ SAHI's − {AP_TOLERANCE:g}",
        machine=machine_info(str(device)),
        results_dir=args.results_dir,
        details=details,
        extra=extra,
    )


def _round_tree(v: Any) -> Any:
    """Floats to 4 significant digits (the noise is larger), inside dicts too."""
    if isinstance(v, dict):
        return {k: _round_tree(x) for k, x in v.items()}
    return float(f"{v:.4g}") if isinstance(v, float) else v


if __name__ == "__main__":
    main()
