"""Which anchors and matcher give every object several positives? Grid-aware diagnostics, no training.

For each option (pyramid levels, anchors per level, matcher threshold ``fg_iou_thresh``), torchvision's
default anchors and the anchors ``sod anchors`` tunes (``anchors.*`` from the params file otherwise) are
scored where the detector has them, on every level's stride grid, with torchvision's own ``Matcher``
(:func:`sod.models.anchors.grid_metrics`): ``bpr_grid`` (share of boxes with an anchor at IoU ≥ fg) and
``positives_per_gt`` (anchors the matcher makes positive per box at IoU ≥ fg), per COCO size bucket and for
boxes under 12 px. The peer is torchvision's RetinaNet as the baseline runs it: its anchors on levels 3–5,
``fg_iou_thresh`` 0.5. The rows compare the params file's own choice with it; every option is kept under
``details.options`` (the README's anchors table comes from there).

The boxes are the augmented training set of the default pipeline: ``--train`` (e.g. ``data/augmented/train.json``
after ``dvc repro augment``), or, without it, ``sod prepare`` + ``sod augment`` with the params file's
settings in a temp dir (about a minute on one thread).

    OMP_NUM_THREADS=1 .venv/bin/python bench/anchors_options.py
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import add_results_arg, machine_info, row, write_result  # noqa: E402
from sod.config import load_params  # noqa: E402
from sod.models import anchors as anc  # noqa: E402
from sod.stages import anchors as anchors_stage  # noqa: E402
from sod.stages import augment, prepare  # noqa: E402

# (levels, anchors per level, fg_iou_thresh): torchvision's layout, more anchors, a lower matcher
# threshold (bg 0.1 below it: bg only splits negatives from ignored anchors), a stride-4 level.
OPTIONS: list[tuple[list[int], int, float]] = [
    ([3, 4, 5], 3, 0.5),
    ([3, 4, 5], 9, 0.5),
    ([3, 4, 5], 3, 0.4),
    ([3, 4, 5], 9, 0.4),
    ([2, 3, 4, 5], 3, 0.5),
    ([2, 3, 4, 5], 9, 0.5),
    ([2, 3, 4, 5], 3, 0.4),
    ([2, 3, 4, 5], 9, 0.4),
]
PEER = ([3, 4, 5], 0.5)  # torchvision RetinaNet: P3-P5 here, default anchors, Matcher(0.5, 0.4)


def training_boxes(params: Any, train: Path | None, work: Path) -> anc.GridBoxes:
    """The augmented training boxes at the detector's input scale; builds them in ``work`` without ``train``."""
    if train is None:
        prepared = work / "prepared"
        prepare.run(params, prepared, work / "prepare.json", work / "sizes.csv", work / "sizes.png", progress=False)
        augment.run(params, prepared / "train.json", work / "augmented", work / "augment.json", work / "p.png", False)
        train = work / "augmented" / "train.json"
    return anchors_stage.load_boxes(train, *params.detector.input_size())


def score(boxes: anc.GridBoxes, levels: list[int], anchors_wh: list[Any], fg: float) -> dict[str, Any]:
    """``bpr_grid``/``positives_per_gt``/``matched_per_gt`` per bucket, with the anchors' (w, h) per level."""
    return {
        **anc.grid_metrics(boxes, [2**lv for lv in levels], anchors_wh, fg),
        "anchors_wh": [[[float(w), float(h)] for w, h in level] for level in anchors_wh],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--train", type=Path, default=None, help="augmented train COCO JSON (default: build one)")
    add_results_arg(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    params = load_params(args.params)
    acfg, dcfg = params.anchors, params.detector
    with tempfile.TemporaryDirectory() as tmp:
        boxes = training_boxes(params, args.train, Path(tmp))

    peer = score(boxes, PEER[0], anc.default_anchors_wh(PEER[0]), PEER[1])
    options = []
    for levels, per_level, fg in OPTIONS:
        start = time.perf_counter()
        tuned = anc.tune_anchors(
            boxes,
            levels,
            per_level,
            fg,
            acfg.kmeans_iters,
            acfg.evolve_generations,
            acfg.evolve_sigma,
            acfg.seed,
            acfg.target_positives,
            acfg.fit_boxes,
        )
        seconds = time.perf_counter() - start
        options.append(
            {
                "levels": levels,
                "anchors_per_level": per_level,
                "fg_iou_thresh": fg,
                "default": score(boxes, levels, anc.default_anchors_wh(levels), fg),
                "tuned": score(boxes, levels, tuned, fg),
                "tune_seconds": round(seconds, 1),
            }
        )
        t = options[-1]["tuned"]
        print(
            f"levels {levels} × {per_level}, fg {fg}: tuned bpr_grid small {t['bpr_grid']['small']}, "
            f"positives small/medium/large {t['positives_per_gt']['small']}/{t['positives_per_gt']['medium']}/"
            f"{t['positives_per_gt']['large']} ({seconds:.0f} s)"
        )

    chosen = next(
        (
            o
            for o in options
            if (o["levels"], o["anchors_per_level"], o["fg_iou_thresh"])
            == (dcfg.levels, acfg.anchors_per_level, dcfg.fg_iou_thresh)
        ),
        None,
    )
    rows = []
    if chosen is not None:
        mine = chosen["tuned" if acfg.method == "kmeans" else "default"]
        for bucket in ("small", "medium", "large", "under_12px"):
            goal = "≥ 3 and ≥ peer" if bucket == "small" else "≥ peer"
            pos, ref = mine["positives_per_gt"][bucket], peer["positives_per_gt"][bucket]
            met = pos >= ref and (bucket != "small" or pos >= 3)
            rows.append(row(f"positives per {bucket} box", "anchors", pos, ref, target=goal, met=met))
        for bucket in ("small", "under_12px"):
            ref = peer["bpr_grid"][bucket]
            rows.append(
                row(
                    f"bpr_grid {bucket}",
                    "share",
                    mine["bpr_grid"][bucket],
                    ref,
                    target="> peer",
                    met=mine["bpr_grid"][bucket] > ref,
                    ratio=None,
                )  # fmt: skip
            )
    write_result(
        "anchors_options",
        rows,
        sod=(
            f"params file: levels {dcfg.levels}, {acfg.anchors_per_level} anchors/level ({acfg.method}), "
            f"fg_iou_thresh {dcfg.fg_iou_thresh}"
        ),
        peer="torchvision RetinaNet's default anchors on levels 3-5, Matcher fg 0.5",
        target="positives per small box ≥ 3, per medium and large box ≥ torchvision's; small bpr_grid above it",
        machine=machine_info(threads=1),
        results_dir=args.results_dir,
        details={"num_boxes": len(boxes), "peer": peer, "options": options},
    )


if __name__ == "__main__":
    main()
