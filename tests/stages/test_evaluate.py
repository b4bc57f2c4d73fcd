"""`sod evaluate` on the tiny pipeline: report keys, re-scoring by plain pycocotools, the data and series behind
every figure, a baseline column that scores the baseline model, the TIDE error breakdown's layout."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sod.evaluation.errors import ERROR_TYPES, TABLE_COLUMNS
from sod.evaluation.plots import RECALL_SERIES
from sod.io import read_json
from tests.evaluation.test_plots import (
    _assert_png,
    _pixels,
    check_object_sizes,
    check_pr_curves,
    check_recall_vs_size,
    check_train_loss,
)
from tests.stages.conftest import sod
from tests.stages.test_train_detector import _train

# COCO's keys and AI-TOD's very tiny / tiny / small16 buckets, in every pass (full, sliced, baseline, bicubic_input).
KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AP_vt", "AP_t", "AP_s16")
AR_KEYS = ("AR_1", "AR_10", "AR_100", "AR_300", "AR_small", "AR_medium", "AR_large", "AR_vt", "AR_t", "AR_s16")
BASELINE_DETS = 5
BASELINE = ("--set", "train.seed=1", "--set", f"detector.detections_per_img={BASELINE_DETS}")


def _evaluate(root: Path, model: Path, name: str, *extra: str) -> dict[str, Path]:
    paths = {
        "report": root / f"reports/{name}.json",
        "per_class": root / f"reports/{name}_per_class.csv",
        "detections": root / f"reports/{name}_detections.json",
        "plots": root / f"reports/plots/{name}",
        "errors": root / f"reports/{name}_errors.json",
    }
    code = sod(
        "evaluate", "--model", str(model), "--val", str(root / "data/prepared/val.json"),
        "--report", str(paths["report"]), "--per-class", str(paths["per_class"]),
        "--detections", str(paths["detections"]), "--plots-dir", str(paths["plots"]),
        "--errors", str(paths["errors"]), *extra,
    )  # fmt: skip
    assert code == 0
    return paths


@pytest.fixture(scope="module")
def models(tiny_pipeline: Path) -> dict[str, Path]:
    """The model under test and a genuinely different baseline: another seed (other initial weights, other
    sample order) and at most ``BASELINE_DETS`` detections per image instead of 300, so that the two score
    differently by construction, even where a one-epoch model's AP is 0."""
    root, out = tiny_pipeline, {}
    for name, extra in (("eval_model", ()), ("eval_baseline", BASELINE)):
        out[name] = root / "models" / f"{name}.pt"
        out[f"{name}_train"] = root / "reports" / f"{name}.json"
        if not out[name].exists():
            # Score threshold 0: the one-epoch model's scores sit near the focal prior (0.01); keep them all.
            code, _ = _train(root, name, "--set", "detector.score_thresh=0.0", *extra)
            assert code == 0
    return out


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline: Path, models: dict[str, Path]) -> dict[str, Path]:
    return _evaluate(tiny_pipeline, models["eval_model"], "evaluate", "--baseline", str(models["eval_baseline"]))


@pytest.fixture(scope="module")
def baseline_alone(tiny_pipeline: Path, models: dict[str, Path]) -> dict[str, Path]:
    """The baseline model evaluated on its own, full image only (the baseline column has no sliced pass)."""
    return _evaluate(
        tiny_pipeline, models["eval_baseline"], "evaluate_baseline", "--set", "evaluate.sliced.enabled=false"
    )


def test_report_has_full_and_sliced_metrics(evaluated: dict[str, Path]) -> None:
    report = read_json(evaluated["report"])
    for section in (report, report["sliced"], report["baseline"]):
        for k in (*KEYS, *AR_KEYS):
            assert k in section and (section[k] is None or 0.0 <= section[k] <= 1.0), k
        assert "images_per_s" not in section  # speeds go to the log and MLflow: the file must reproduce
    assert report["max_dets"] == 300
    assert report["detections"] > 0


def test_baseline_column_scores_the_baseline_model(
    evaluated: dict[str, Path], baseline_alone: dict[str, Path], models: dict[str, Path]
) -> None:
    report, alone = read_json(evaluated["report"]), read_json(baseline_alone["report"])
    baseline = report["baseline"]
    assert baseline["model"] == str(models["eval_baseline"])
    assert "sliced" not in baseline
    # The baseline column is what the baseline model scores by itself ...
    for k in (*KEYS, *AR_KEYS, "images", "gt_instances", "detections"):
        assert baseline[k] == alone[k], k
    # ... and the comparison shows that it is another model: at most BASELINE_DETS boxes per image where the
    # model keeps 300 (score threshold 0), and not the model's own best boxes (other weights, other scores).
    assert 0 < baseline["detections"] <= BASELINE_DETS * report["images"] < report["detections"]

    def boxes(path: Path) -> set[tuple]:
        return {(d["image_id"], d["category_id"], *d["bbox"], d["score"]) for d in read_json(path)}

    assert boxes(baseline_alone["detections"]) - boxes(evaluated["detections"])


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


def test_tables_and_plots(evaluated: dict[str, Path], tiny_pipeline: Path) -> None:
    report = read_json(evaluated["report"])
    per_class = pd.read_csv(evaluated["per_class"])
    categories = read_json(tiny_pipeline / "data/prepared/val.json")["categories"]
    assert list(per_class["category_id"]) == [c["id"] for c in categories]
    assert {"AP_small", "AP_vt", "AP_t", "AP_s16"} <= set(per_class.columns)
    check_pr_curves(pd.read_csv(evaluated["plots"] / "pr_curves.csv"), report)
    rs = pd.read_csv(evaluated["plots"] / "recall_vs_size.csv")
    check_recall_vs_size(rs, report)
    assert list(rs.columns) == [
        "size_min", "size_max", "gt_instances", "matched_full", "recall_full", "matched_sliced", "recall_sliced",
    ]  # fmt: skip
    for name in ("pr_curves.png", "recall_vs_size.png", "preview.png"):
        _assert_png(evaluated["plots"] / name)
    # Sliced inference on: the figure draws both series (each at least in the legend).
    for _, color in RECALL_SERIES.values():
        assert _pixels(evaluated["plots"] / "recall_vs_size.png", color) > 0


def test_figure_data_without_sliced_inference(baseline_alone: dict[str, Path]) -> None:
    report = read_json(baseline_alone["report"])
    assert "sliced" not in report
    check_pr_curves(pd.read_csv(baseline_alone["plots"] / "pr_curves.csv"), report)
    rs = pd.read_csv(baseline_alone["plots"] / "recall_vs_size.csv")
    check_recall_vs_size(rs, report)
    assert "recall_sliced" not in rs.columns
    png = baseline_alone["plots"] / "recall_vs_size.png"
    assert _pixels(png, RECALL_SERIES["recall_full"][1]) > 0 and _pixels(png, RECALL_SERIES["recall_sliced"][1]) == 0


def test_upstream_figure_data_of_the_tiny_pipeline(tiny_pipeline: Path, models: dict[str, Path]) -> None:
    """The CSVs behind the prepare and training figures, as the tiny pipeline's stages wrote them."""
    reports = tiny_pipeline / "reports"
    check_object_sizes(pd.read_csv(reports / "sizes.csv"), read_json(reports / "prepare.json"))
    check_train_loss(pd.read_csv(reports / "eval_model_loss.csv"), read_json(models["eval_model_train"]))


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


@pytest.mark.parametrize("which", ["evaluated", "baseline_alone"])
def test_error_breakdown_per_pass_and_size_bucket(which: str, request: pytest.FixtureRequest) -> None:
    """errors.json: the documented keys for each pass that ran; its AP50 over all sizes is the report's, every
    GT box and every scored detection is counted once; errors.csv and errors.png follow it."""
    paths = request.getfixturevalue(which)
    report, errors = read_json(paths["report"]), read_json(paths["errors"])
    passes = {"full": report, **({"sliced": report["sliced"]} if "sliced" in report else {})}
    assert list(errors) == list(passes) == (["full", "sliced"] if which == "evaluated" else ["full"])
    for name, section in passes.items():
        assert list(errors[name]) == ["all", "small", "medium", "large"]
        for bucket in errors[name].values():
            assert list(bucket) == ["AP50", *ERROR_TYPES, "counts"]
            assert list(bucket["counts"]) == ["GT", "TP", *ERROR_TYPES]
            for e in ERROR_TYPES:
                assert bucket[e] is None or 0.0 <= bucket[e] <= 1.0 - bucket["AP50"] + 1e-9, (name, e)
        overall = errors[name]["all"]
        assert overall["AP50"] == pytest.approx(section["AP50"], abs=1e-12)  # the same pycocotools numbers
        counts = overall["counts"]
        assert counts["GT"] == section["gt_instances"] > 0
        # No crowd boxes in the tiny data: each scored detection is a true positive or one false-positive type.
        assert sum(counts[k] for k in ("TP", "Cls", "Loc", "Both", "Dupe", "Bkg")) == section["detections"]
    table = pd.read_csv(paths["plots"] / "errors.csv")
    assert list(table.columns) == TABLE_COLUMNS and len(table) == len(passes) * 4 * len(ERROR_TYPES)
    assert list(dict.fromkeys(table["pass"])) == list(passes)
    _assert_png(paths["plots"] / "errors.png")


def test_plain_model_has_no_bicubic_control(evaluated: dict[str, Path]) -> None:
    assert "bicubic_input" not in read_json(evaluated["report"])


def test_plots_dir_is_marked_and_a_users_plots_dir_is_refused(
    evaluated: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sod.io import OWNER_MARKER
    from sod.stages.evaluate import PLOT_FILES

    assert read_json(evaluated["plots"] / OWNER_MARKER) == {"stage": "evaluate", "files": sorted(PLOT_FILES)}
    user = tmp_path / "plots"
    user.mkdir()
    (user / "preview.png").write_bytes(b"the user's")  # one of evaluate's names, but no marker: not sod's
    code = sod(
        "evaluate", "--model", str(evaluated["report"]), "--val", str(tmp_path / "val.json"),
        "--report", str(tmp_path / "r.json"), "--per-class", str(tmp_path / "pc.csv"),
        "--detections", str(tmp_path / "d.json"), "--plots-dir", str(user),
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(user) in err
    assert [p.name for p in user.iterdir()] == ["preview.png"] and (user / "preview.png").read_bytes() == b"the user's"
    assert not (tmp_path / "r.json").exists()  # refused before scoring anything
