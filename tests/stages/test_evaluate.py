"""`sod evaluate` on the tiny pipeline: report keys, re-scoring by plain pycocotools, plots, baseline column."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sod.io import read_json
from tests.stages.conftest import sod
from tests.stages.test_train_detector import _train

KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline: Path) -> dict[str, Path]:
    root = tiny_pipeline
    model = root / "models" / "eval_model.pt"
    if not model.exists():
        # Score threshold 0: the one-epoch model's scores sit near the focal prior (0.01); keep them all.
        assert _train(root, "eval_model", "--set", "detector.score_thresh=0.0")[0] == 0
    paths = {
        "report": root / "reports/evaluate.json",
        "per_class": root / "reports/per_class.csv",
        "detections": root / "reports/detections.json",
        "plots": root / "reports/plots/evaluate",
    }
    code = sod(
        "evaluate", "--model", str(model), "--val", str(root / "data/prepared/val.json"),
        "--report", str(paths["report"]), "--per-class", str(paths["per_class"]),
        "--detections", str(paths["detections"]), "--plots-dir", str(paths["plots"]), "--baseline", str(model),
    )  # fmt: skip
    assert code == 0
    return paths


def test_report_has_full_and_sliced_metrics(evaluated: dict[str, Path]) -> None:
    report = read_json(evaluated["report"])
    for section in (report, report["sliced"], report["baseline"]):
        for k in KEYS:
            assert k in section and (section[k] is None or 0.0 <= section[k] <= 1.0)
    assert report["max_dets"] == 300
    assert report["detections"] > 0
    # The same model as "baseline" scores exactly the same on the full-image pass.
    assert all(report["baseline"][k] == report[k] for k in KEYS)


def test_detections_rescore_with_plain_pycocotools(evaluated: dict[str, Path], tiny_pipeline: Path) -> None:
    report = read_json(evaluated["report"])
    dets = read_json(evaluated["detections"])
    assert dets and len({d["image_id"] for d in dets}) == report["images"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_pipeline / "data/prepared/val.json"))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 100, report["max_dets"]]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]
    ap = float(precision[precision > -1].mean())
    assert abs(ap - report["AP"]) < 1e-9


def test_tables_and_plots(evaluated: dict[str, Path]) -> None:
    per_class = pd.read_csv(evaluated["per_class"])
    assert len(per_class) == 11 and "AP_small" in per_class.columns
    rs = pd.read_csv(evaluated["plots"] / "recall_vs_size.csv")
    assert {"size_min", "recall_full", "recall_sliced"} <= set(rs.columns)
    for name in ("pr_curves.png", "recall_vs_size.png", "preview.png"):
        assert (evaluated["plots"] / name).read_bytes()[:4] == b"\x89PNG"


def test_sr_input_model_is_also_scored_with_bicubic_input(tiny_pipeline: Path, sr_input: dict[str, Path]) -> None:
    root, report = tiny_pipeline, tiny_pipeline / "reports/evaluate_sr.json"
    code = sod(
        "evaluate", "--model", str(sr_input["sr_frozen"]), "--val", str(root / "data/prepared/val.json"),
        "--report", str(report), "--per-class", str(root / "reports/per_class_sr.csv"),
        "--detections", str(root / "reports/detections_sr.json"), "--plots-dir", str(root / "reports/plots/sr"),
    )  # fmt: skip
    assert code == 0
    result = read_json(report)
    control = result["bicubic_input"]  # the same detector, bicubic instead of SR in front
    assert all(k in control and k in result["sliced"] for k in KEYS)
    assert control["detections"] > 0 and result["detections"] > 0
    assert "sliced" not in control
    dets = read_json(root / "reports/detections_sr.json")  # in the val images' own pixels, not the 2× input's
    assert max(d["bbox"][0] + d["bbox"][2] for d in dets) <= 128 + 1e-3


def test_plain_model_has_no_bicubic_control(evaluated: dict[str, Path]) -> None:
    assert "bicubic_input" not in read_json(evaluated["report"])
