"""The ``sod`` command: one subcommand per DVC stage, plus ``predict`` (a trained detector on the user's images).

It parses arguments, loads params, calls the stage and turns a SodError into a one-line message
with exit code 2, and a transient failure (a connection or timeout error, see sod.errors) into one with
exit code 75. Paths come from the command line (dvc.yaml passes them), hyperparameters from
params.yaml plus ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sod import __version__
from sod.config import Params, load_params
from sod.errors import EXIT_TRANSIENT, EXIT_USAGE, SodError, is_transient

log = logging.getLogger("sod")


def _common(parser: argparse.ArgumentParser, params_optional: bool = False) -> None:
    parser.add_argument(
        "--params",
        default=None if params_optional else "params.yaml",
        metavar="FILE",
        help=(
            "params file with one section per stage (default: params.yaml, or sod's defaults where there is none)"
            if params_optional
            else "params file with one section per stage (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--set",
        "-S",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param, e.g. --set augment.copy_paste.times=2 (repeatable; like `dvc exp run -S`)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help=(
            "CPU threads for torch (default: env SOD_THREADS, else OMP_NUM_THREADS, else one per core; "
            "train-detector: params train.threads when > 0). Give parallel stages a share of the cores each"
        ),
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {text!r}")
    return value


def _thread_budget(args: argparse.Namespace, params: Params) -> int | None:
    """The stage's CPU threads: ``--threads``, else ``train.threads`` > 0 for train-detector, else the
    environment (see sod.runtime); None keeps torch's default.

    Raises:
        ConfigError: SOD_THREADS or OMP_NUM_THREADS is set but not an integer ≥ 1 (checked even when
            overridden, so a bad value never passes unnoticed).
    """
    from sod.runtime import thread_budget

    from_env = thread_budget()
    if args.threads is not None:
        return args.threads
    if args.command == "train-detector" and params.train.threads > 0:
        return params.train.threads
    return from_env


def _prepare(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import prepare

    return prepare.run(
        params,
        out_dir=Path(args.out),
        report=Path(args.report),
        sizes_csv=Path(args.sizes_csv),
        sizes_png=Path(args.sizes_png),
        progress=not args.quiet,
    )


def _augment(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import augment

    return augment.run(
        params,
        train_json=Path(args.train),
        out_dir=Path(args.out),
        report=Path(args.report),
        preview=Path(args.preview),
        progress=not args.quiet,
    )


def _anchors(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import anchors

    return anchors.run(
        params,
        train_json=Path(args.train),
        out=Path(args.out),
        report=Path(args.report),
        plot=Path(args.plot),
    )


def _train_sr(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import train_sr

    return train_sr.run(
        params,
        train_json=Path(args.train),
        val_json=Path(args.val),
        out=Path(args.out),
        report=Path(args.report),
        preview=Path(args.preview),
        checkpoint=Path(args.checkpoint),
        progress=not args.quiet,
    )


def _train_detector(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import train_detector

    return train_detector.run(
        params,
        train_json=Path(args.train),
        anchors_json=Path(args.anchors),
        out=Path(args.out),
        report=Path(args.report),
        loss_csv=Path(args.loss_csv),
        checkpoint_dir=Path(args.checkpoint_dir),
        sr_model=Path(args.sr_model) if args.sr_model else None,
        progress=not args.quiet,
    )


def _evaluate(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import evaluate

    return evaluate.run(
        params,
        model_path=Path(args.model),
        val_json=Path(args.val),
        report=Path(args.report),
        per_class=Path(args.per_class),
        detections=Path(args.detections),
        plots_dir=Path(args.plots_dir),
        baseline_model=Path(args.baseline) if args.baseline else None,
        progress=not args.quiet,
        errors=Path(args.errors) if args.errors else None,
    )


def _predict(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import predict

    result = predict.run(
        params,
        model=args.model,
        sources=[Path(p) for p in args.images],
        out=Path(args.out),
        coco=Path(args.coco) if args.coco else None,
        images_json=Path(args.images_json) if args.images_json else None,
        draw_dir=Path(args.draw) if args.draw else None,
        mode=args.mode,
        on_bad_image=args.on_bad_image,
        draw_score=args.draw_score,
        progress=not args.quiet,
    )
    skipped = result["images_skipped_missing"] + result["images_skipped_corrupt"] + result["images_skipped_too_large"]
    print(
        f"sod predict: {result['detections']} detections on {result['images']} images ({result['mode']}) "
        f"-> {result['out']}"
        + (f"; images listed in {result['images_json']}" if result["images_json"] else "")
        + (
            f"; skipped {skipped} bad images ({result['images_skipped_missing']} missing, "
            f"{result['images_skipped_corrupt']} corrupt, {result['images_skipped_too_large']} too large)"
            if skipped
            else ""
        )
    )
    return result


def _report(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod.stages import report

    return report.run(params, runs_dir=Path(args.runs), table=Path(args.table), plots_dir=Path(args.plots_dir))


def _readme(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod import readme

    del params  # every number comes from the committed reports and bench results, none from params
    changed = readme.update_readme(Path(args.readme), Path(args.root), check=args.check)
    if args.check and changed:
        raise SodError(f"{args.readme} is stale: run `sod readme` and commit it")
    print(f"sod readme: {args.readme} {'changed' if changed else 'up to date'}")
    return {"changed": changed}


def _log_run(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    from sod import tracking

    run_id = tracking.log_pending(args.stage)
    print(f"sod log-run: logged stage {args.stage} as MLflow run {run_id} at {tracking.tracking_uri()}")
    return {"run_id": run_id}


# Per stage: the options naming the plots and files that MLflow keeps as artifacts (besides the report).
_ARTIFACT_ARGS = {
    "prepare": ["sizes_csv", "sizes_png"],
    "augment": ["preview"],
    "anchors": ["out", "plot"],
    "train_sr": ["preview"],
    "train_detector": ["loss_csv"],
    "evaluate": ["per_class", "errors", "plots_dir"],
    "report": ["plots_dir"],
}


def _tracked_run(args: argparse.Namespace, params: Params, timing: dict[str, Any] | None = None) -> Any:
    """The MLflow record of a finished stage: which report, plots and model it logs (see sod.tracking)."""
    from sod import tracking

    stage = args.command.replace("-", "_")
    run = tracking.StageRun(
        stage=stage,
        report=args.table if stage == "report" else args.report,
        artifacts=[getattr(args, name) for name in _ARTIFACT_ARGS[stage] if getattr(args, name)],  # optional: None
        params=tracking.stage_params(params, stage),
        timing=dict(timing or {}),
    )
    if stage == "train_sr":
        run.model, run.model_kind = args.out, "sr"
    elif stage == "train_detector":
        run.model, run.model_kind, run.history_csv = args.out, "detector", args.loss_csv
    elif stage == "evaluate":
        run.evaluated_model = args.model
    return run


def _track(args: argparse.Namespace, params: Params, result: Any = None) -> None:
    """Log the finished stage to MLflow (never fails the stage; see sod.tracking). Rank 0 only under torchrun."""
    if os.environ.get("RANK", "0") != "0" or args.command in ("log-run", "readme", "predict"):
        return
    from sod import tracking

    if not tracking.enabled():
        return
    timing = result.get("timing") if isinstance(result, dict) else None
    run = _tracked_run(args, params, timing if isinstance(timing, dict) else None)
    tracking.log_stage(run)
    if run.stage == "report":
        from sod.stages.report import COLUMNS

        tracking.log_variants(run.report, COLUMNS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sod",
        description=(
            "Small-object detection pipeline. Each subcommand is one DVC stage (see dvc.yaml); "
            "`dvc repro` runs them in order. Hyperparameters come from params.yaml, paths from the "
            "command line. Bad input gives a one-line error and exit code 2; a transient failure (a connection "
            "or a timeout: a retry may pass) exit code 75."
        ),
        epilog="Run `sod <command> --help` for a stage's options.",
    )
    parser.add_argument("--version", action="version", version=f"sod {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser(
        "prepare",
        help="validate and clean the dataset (embedded or your COCO), split it, write size statistics",
        description=(
            "Read the dataset named by params `data.source` (the embedded scenes, or your COCO files under "
            "`data.coco.*`), validate every record, clean what can be cleaned (counting it), convert images "
            "to 8-bit RGB, split train/val, and write COCO JSON + images under --out. Params: data.*, prepare.*."
        ),
    )
    _common(p)
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output dir: train.json, val.json, images/; new, empty or a previous prepare output (.sod-owner)",
    )
    p.add_argument("--report", required=True, metavar="JSON", help="counts per split and every cleaning count")
    p.add_argument("--sizes-csv", required=True, metavar="CSV", help="one row per instance: split, size (DVC plot)")
    p.add_argument("--sizes-png", required=True, metavar="PNG", help="histogram of object sizes")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "augment",
        help="oversample small-object images and copy-paste small objects (train split only)",
        description=(
            "Oversample images holding small objects and copy-paste small objects into training images. "
            "Writes the augmented train annotations, only the new images, a report and a preview grid. "
            "The val split is never augmented. Params: augment.*."
        ),
    )
    _common(p)
    p.add_argument("--train", required=True, metavar="JSON", help="prepared train annotations")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output dir: train.json and new images/; new, empty or a previous augment output (.sod-owner)",
    )
    p.add_argument("--report", required=True, metavar="JSON", help="before/after counts, pastes placed/rejected")
    p.add_argument("--preview", required=True, metavar="PNG", help="grid of augmented images with boxes")
    p.set_defaults(func=_augment)

    p = sub.add_parser(
        "anchors",
        help="fit anchors to the training boxes on the stride grid; report recall and positives per box",
        description=(
            "Fit anchors to the training boxes at the detector's input scale (k-means with 1 − IoU, then "
            "evolution scored where the anchors really sit: each level's stride grid), assign them to FPN "
            "levels, and compare with torchvision's default anchors: bpr_grid (share of boxes with a grid "
            "anchor at IoU ≥ fg_iou_thresh) and positives_per_gt (anchors the detector's assignment makes "
            "positive per box: torchvision's matcher or ATSS, detector.assigner), per size bucket. The fit runs "
            "for either anchors.method; the method picks which set --out holds (kmeans: the fit, default: "
            "torchvision's). Params: anchors.*, detector.min_size/max_size/levels/fg_iou_thresh/assigner."
        ),
    )
    _common(p)
    p.add_argument("--train", required=True, metavar="JSON", help="(augmented) train annotations")
    p.add_argument("--out", required=True, metavar="JSON", help="anchors per FPN level, read by the detector")
    p.add_argument("--report", required=True, metavar="JSON", help="grid BPR and positives per box, default vs tuned")
    p.add_argument("--plot", required=True, metavar="PNG", help="GT box sizes with the anchors over them")
    p.set_defaults(func=_anchors)

    p = sub.add_parser(
        "train-sr",
        help="train the super-resolution front end (MSE + perceptual loss), score PSNR/SSIM vs bicubic",
        description=(
            "Train an SR network (SRCNN, ESPCN or FSRCNN) on patches of the training images, biased toward "
            "small objects, with pixel MSE plus a perceptual loss; score PSNR/SSIM against bicubic on the val "
            "images, whole and on small-object boxes. Resumes from --checkpoint (the last finished epoch) "
            "after a kill. Params: sr.*."
        ),
    )
    _common(p)
    p.add_argument("--train", required=True, metavar="JSON", help="train annotations (patches come from these images)")
    p.add_argument("--val", required=True, metavar="JSON", help="val annotations (PSNR/SSIM are scored on these)")
    p.add_argument("--out", required=True, metavar="PT", help="trained SR model (state dict + its config)")
    p.add_argument(
        "--report", required=True, metavar="JSON", help="PSNR/SSIM of bicubic and SR, overall and small objects"
    )
    p.add_argument("--preview", required=True, metavar="PNG", help="strip of LR | bicubic | SR | HR crops")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="per-epoch checkpoint, resumed when present")
    p.set_defaults(func=_train_sr)

    p = sub.add_parser(
        "train-detector",
        help="train the detector (RetinaNet/Faster R-CNN, focal loss, ATSS or IoU assignment); resumes after a kill",
        description=(
            "Train the detector on the (augmented) train split with the anchors from `sod anchors`, each box "
            "assigned its positive anchors by ATSS or torchvision's IoU matcher (detector.assigner). AdamW or "
            "SGD, warm-up then cosine, gradient clipping, AMP on CUDA. Checkpoints every epoch into "
            "--checkpoint-dir and resumes from the last finished epoch when rerun after a kill. "
            "Multi-GPU/multi-process: "
            "`torchrun --nproc_per_node=N -m sod.cli train-detector ...`. detector.input_upscale bicubic|sr "
            "upscales every image by detector.upscale_factor first (sr: with --sr-model, fine-tuned end to end "
            "with detector.sr_finetune). Params: detector.*, train.*, augment.online.*."
        ),
    )
    _common(p)
    p.add_argument("--train", required=True, metavar="JSON", help="(augmented) train annotations")
    p.add_argument("--anchors", required=True, metavar="JSON", help="anchors per FPN level from `sod anchors`")
    p.add_argument(
        "--out", required=True, metavar="PT", help="trained model: state dict + the config it was built from"
    )
    p.add_argument("--report", required=True, metavar="JSON", help="final loss, images/s, wall time")
    p.add_argument("--loss-csv", required=True, metavar="CSV", help="per-epoch losses (a DVC plot)")
    p.add_argument(
        "--checkpoint-dir",
        required=True,
        metavar="DIR",
        help="per-epoch checkpoints, one file per configuration; new, empty or this stage's own (.sod-owner)",
    )
    p.add_argument(
        "--sr-model",
        metavar="PT",
        help="SR model from `sod train-sr`; read only with detector.input_upscale: sr (it is saved inside --out)",
    )
    p.set_defaults(func=_train_detector)

    p = sub.add_parser(
        "evaluate",
        help="COCO AP/AR by object size, full-image and sliced inference, curves and a preview grid",
        description=(
            "Score the trained detector on the val split with pycocotools: AP, AP50, AP75, AP_small/medium/large, "
            "AI-TOD's AP_vt/t/s16 (sqrt(area) up to 8, 8-16, 16-32 px) and AR at evaluate.max_dets, for full-image "
            "inference (top level of --report) and for sliced inference merged with it (under 'sliced'). Writes "
            "per-class AP, COCO-format detections that plain pycocotools can re-score, PR curves per size bucket, "
            "recall versus object size, the TIDE error breakdown per size bucket (AP50 lost to "
            "Cls/Loc/Both/Dupe/Bkg/Miss errors) and a preview grid (predictions coloured by right class, wrong "
            "class or no object; missed small objects highlighted). "
            "Params: evaluate.*."
        ),
    )
    _common(p)
    p.add_argument("--model", required=True, metavar="PT", help="trained detector from `sod train-detector`")
    p.add_argument("--val", required=True, metavar="JSON", help="val annotations (the ground truth)")
    p.add_argument(
        "--report", required=True, metavar="JSON", help="metrics: full-image at the top, sliced under 'sliced'"
    )
    p.add_argument("--per-class", required=True, metavar="CSV", help="AP per category")
    p.add_argument("--detections", required=True, metavar="JSON", help="COCO-format detections of the full-image pass")
    p.add_argument(
        "--plots-dir",
        required=True,
        metavar="DIR",
        help="pr_curves.csv/.png, recall_vs_size.csv/.png, errors.csv/.png, preview.png; new, empty or this "
        "stage's own (.sod-owner)",
    )
    p.add_argument(
        "--errors",
        metavar="JSON",
        help="TIDE error breakdown per size bucket (dAP50 per error type, counts), full-image and sliced",
    )
    p.add_argument(
        "--baseline",
        metavar="PT",
        help="optional second detector (e.g. torchvision defaults) scored on the same val set, under 'baseline'",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "predict",
        help="run a trained detector on your images of any size: COCO results JSON, optional pictures with boxes",
        description=(
            "Run a trained detector on a folder or a list of images of any size (not a DVC stage). Each image is "
            "read at its original size; boxes come back in its own pixels. --mode full runs the whole image resized "
            "as the detector was trained (detector.min_size/max_size), plus the evaluate.scales pyramid; sliced also "
            "cuts tiles of evaluate.sliced.tile px with evaluate.sliced.overlap from the original pixels, resizes "
            "each by the full image's factor (times evaluate.sliced.upscale when set), runs them in batches of "
            "evaluate.sliced.batch_size and merges them with the full-image pass "
            "(evaluate.sliced.merge/match/match_thresh/include_full); adaptive runs only the tiles around full-image "
            "candidates scoring at least evaluate.sliced.select_score (small boxes, and for a RetinaNet the hot "
            "cells of its finest level). Default: params evaluate.sliced.enabled/select. Every evaluate.* param "
            "applies (max_dets, score_thresh, batch_size images per step, device); change one with --set, e.g. --set "
            "evaluate.sliced.tile=512. Writes COCO results [{image_id, category_id, bbox [x, y, w, h] in pixels, "
            "score}] to --out. Image ids: from --coco (matched by file_name, else by a unique base name), else 1..N "
            "by sorted file name, with the images listed in --images-json (a COCO file pycocotools' loadRes "
            "accepts). A missing, corrupt or unreadable image stops the run with one line naming it, or with "
            "--on-bad-image skip is left out and counted. Never overwrites a file sod did not write: --out and "
            "--images-json are recorded in their folder's .sod-owner marker, --draw must be a new or empty folder or "
            "a previous --draw folder."
        ),
    )
    _common(p, params_optional=True)  # run anywhere, not only in the repo
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="image files and/or folders (a folder: its files with an image extension, not recursive)",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="PT|URI",
        help="a detector file from `sod train-detector` (models/detector.pt) or a registered MLflow model version, "
        "models:/sod-detector/<version>, read from MLFLOW_TRACKING_URI (default sqlite:///mlflow.db here; offline)",
    )
    p.add_argument("--out", required=True, metavar="JSON", help="COCO results JSON to write")
    p.add_argument("--coco", metavar="JSON", help="COCO annotations whose 'images' give the image ids")
    p.add_argument(
        "--images-json",
        metavar="JSON",
        help="without --coco: where the images list (ids, file names, sizes) and categories go "
        "(default: --out with .images.json)",
    )
    p.add_argument("--draw", metavar="DIR", help="also write one PNG per image with its boxes into DIR")
    p.add_argument("--draw-score", type=float, default=0.3, metavar="S",
                   help="least score of a drawn box (default: %(default)s); the JSON keeps every box")  # fmt: skip
    p.add_argument(
        "--mode",
        choices=["full", "sliced", "adaptive"],
        help="full image only, sliced (all tiles + full image) or adaptive (tiles around small candidates); "
        "default from params evaluate.sliced.enabled/select",
    )
    p.add_argument(
        "--on-bad-image",
        choices=["error", "skip"],
        default="error",
        help="a missing/corrupt/unreadable image: stop with an error (default) or skip it and count it",
    )
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "report",
        help="the ablation table (reports/ablation.csv) and AP-by-size figures from the variants' results",
        description=(
            "Collect the variants that flows/ablation.py ran (one <variant>.json per variant under --runs) into "
            "one CSV row per variant (the params that differ, AP, AP50, AP_small/medium/large, full-image and "
            "sliced) and draw AP_small/medium/large against each lever (oversampling ratio, copy-paste count, "
            "focal gamma, anchors) and full vs sliced inference."
        ),
    )
    _common(p)
    p.add_argument("--runs", required=True, metavar="DIR", help="one <variant>.json per variant")
    p.add_argument("--table", required=True, metavar="CSV", help="one row per variant")
    p.add_argument(
        "--plots-dir",
        required=True,
        metavar="DIR",
        help="ap_vs_<lever>.png, full_vs_sliced.png; new, empty or this stage's own (.sod-owner)",
    )
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "readme",
        help="regenerate the README's results and benchmark sections from the committed reports and bench results",
        description=(
            "Rewrite what lies between the README's `<!-- results:begin/end -->` and `<!-- benchmarks:begin/end -->` "
            "markers from reports/evaluate.json, train_detector.json, ablation.csv, anchors.json, train_sr.json, "
            "augment.json and bench/results/<bench>.json; the rest of the README is untouched. A file not "
            "committed yet is shown as not measured. --check only compares (exit 2 when stale)."
        ),
    )
    p.add_argument("--readme", default="README.md", metavar="MD", help="the README to update (default: %(default)s)")
    p.add_argument("--root", default=".", metavar="DIR", help="repo root holding reports/ and bench/ (default: .)")
    p.add_argument("--check", action="store_true", help="do not write; exit 2 when the README is stale")
    p.set_defaults(func=_readme)

    p = sub.add_parser(
        "log-run",
        help="log a finished stage to MLflow after the tracking server was down during its run",
        description=(
            "When MLflow logging fails, a stage still finishes and keeps what it would log in "
            ".mlflow_pending/<stage>.json. This logs it (to MLFLOW_TRACKING_URI, default sqlite:///mlflow.db) "
            "and removes the marker."
        ),
    )
    p.add_argument("stage", help="the DVC stage name, e.g. train_detector")
    p.set_defaults(func=_log_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace, Params], dict[str, Any]] = args.func
    try:
        if hasattr(args, "params"):
            path = args.params
            if path is None:  # --params optional (predict): params.yaml where there is one, else the defaults
                path = "params.yaml" if Path("params.yaml").is_file() else None
            params = load_params(path, args.overrides)
        else:
            params = load_params(None)
        if hasattr(args, "threads"):  # a stage: it runs under its thread budget, restored afterwards
            from sod.io import pixel_limit
            from sod.runtime import torch_threads

            # Every stage reads images under prepare.max_pixels: what prepare accepted, the others can read.
            with torch_threads(_thread_budget(args, params)), pixel_limit(params.prepare.max_pixels):
                result = func(args, params)
        else:
            result = func(args, params)
        _track(args, params, result)
    except SodError as exc:
        print(f"sod {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"sod {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_transient(exc):
            raise  # a bug: keep the traceback
        # A lock, a peer or a server that did not answer: the same command may pass later. The distinct exit
        # code lets a scheduler (flows/pipeline.py) retry this, and only this, without reading the output.
        print(f"sod {args.command}: transient error, a retry may pass: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_TRANSIENT
    return 0


if __name__ == "__main__":
    sys.exit(main())
