"""Evaluation figures: valid, deterministic PNGs that draw every series; the missed-small-object test behind the
preview grid; and the data behind every figure the README names (the committed CSVs and reports) holds the
series the README and ``dvc.yaml`` name, with values that agree with the stage reports.

The ``check_*`` functions are shared with tests/stages/test_evaluate.py, which runs them on the files a tiny
pipeline writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.colors import to_rgb
from PIL import Image

from sod.evaluation.coco_eval import CocoEvaluator
from sod.evaluation.plots import (
    BUCKET_COLORS,
    NO_OBJECT_COLOR,
    PRED_COLOR,
    RECALL_SERIES,
    WRONG_CLASS_COLOR,
    PreviewItem,
    missed_small,
    plot_detection_grid,
    plot_pr_curves,
    plot_recall_vs_size,
    plot_sr_preview,
    prediction_kinds,
)
from sod.io import read_json, write_json
from sod.stages.evaluate import recall_vs_size_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
REPORTS = REPO / "reports"


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def _item() -> PreviewItem:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    gt = np.array(
        [
            [4, 4, 14, 14],  # small, found by an exact prediction
            [30, 30, 40, 40],  # small, only a low-score prediction → missed
            [50, 5, 60, 15],  # small, a prediction of another class → missed when labels are given
            [0, 20, 60, 60],  # large (2400 px² ≥ 32²), not predicted → missed but not small
        ],
        dtype=float,
    )
    pred = np.array([[4, 4, 14, 14], [30, 30, 40, 40], [50, 5, 60, 15]], dtype=float)
    return PreviewItem(
        image=image,
        gt_boxes_xyxy=gt,
        pred_boxes_xyxy=pred,
        pred_scores=np.array([0.9, 0.1, 0.8]),
        gt_labels=np.array([1, 1, 1, 2]),
        pred_labels=np.array([1, 1, 2]),
        title="img 1",
    )


def test_missed_small() -> None:
    item = _item()
    assert missed_small(item, score_thresh=0.3).tolist() == [False, True, True, False]
    # Class-agnostic without labels: the third GT is found.
    item.gt_labels = item.pred_labels = None
    assert missed_small(item, score_thresh=0.3).tolist() == [False, True, False, False]
    # A GT 'area' field overrides the box area: declared large → never a missed *small* object.
    item.gt_areas = np.array([100, 5000, 100, 2400])
    assert missed_small(item, score_thresh=0.3).tolist() == [False, False, False, False]
    # No prediction above the threshold: every small GT is missed.
    assert missed_small(_item(), score_thresh=0.95).tolist() == [True, True, True, False]


def test_prediction_kinds() -> None:
    item = _item()
    # Kept at 0.3: the exact right-class box (0) and the box on GT 2 with class 2 where GT 2 is class 1 (1).
    assert prediction_kinds(item, score_thresh=0.3).tolist() == [0, 1]
    # A box on nothing: [70, 40, 90, 60] overlaps no GT box; a box half on GT 0 ([9, 4, 19, 14]: IoU 50/150).
    item.pred_boxes_xyxy = np.concatenate([item.pred_boxes_xyxy, [[70, 40, 90, 60], [9, 4, 19, 14]]])
    item.pred_scores = np.concatenate([item.pred_scores, [0.5, 0.5]])
    item.pred_labels = np.concatenate([item.pred_labels, [1, 1]])
    assert prediction_kinds(item, score_thresh=0.3).tolist() == [0, 1, 2, 2]
    assert prediction_kinds(item, score_thresh=0.3, iou_thresh=0.3).tolist() == [0, 1, 2, 0]
    # Without labels, a box on any object is on an object of its class.
    item.gt_labels = item.pred_labels = None
    assert prediction_kinds(item, score_thresh=0.3).tolist() == [0, 0, 2, 2]
    assert prediction_kinds(item, score_thresh=0.95).tolist() == []
    item.gt_boxes_xyxy = np.zeros((0, 4))
    assert prediction_kinds(item, score_thresh=0.3).tolist() == [2, 2, 2, 2]


def test_detection_grid_colours_predictions_by_what_they_lie_on(tmp_path: Path) -> None:
    item = _item()
    plot_detection_grid([item], tmp_path / "wrong.png")
    assert _pixels(tmp_path / "wrong.png", WRONG_CLASS_COLOR, tol=30) > 0
    assert _pixels(tmp_path / "wrong.png", NO_OBJECT_COLOR, tol=30) == 0
    item.pred_labels = np.array([1, 1, 1])  # the third box now has GT 2's class
    plot_detection_grid([item], tmp_path / "right.png")
    assert _pixels(tmp_path / "right.png", WRONG_CLASS_COLOR, tol=30) == 0
    assert _pixels(tmp_path / "right.png", PRED_COLOR, tol=30) > 0
    item.pred_boxes_xyxy = np.array([[4, 4, 14, 14], [30, 30, 40, 40], [70, 40, 90, 60]], dtype=float)
    plot_detection_grid([item], tmp_path / "none.png")
    assert _pixels(tmp_path / "none.png", NO_OBJECT_COLOR, tol=30) > 0


def test_detection_grid_writes_a_deterministic_png(tmp_path: Path) -> None:
    items = [_item(), _item(), _item()]
    plot_detection_grid(items, tmp_path / "a.png", cols=2)
    plot_detection_grid(items, tmp_path / "b.png", cols=2)
    _assert_png(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    plot_detection_grid([], tmp_path / "empty.png")
    _assert_png(tmp_path / "empty.png")


def _pixels(path: Path, color: str, tol: float = 0.0) -> int:
    """How many pixels of the PNG at ``path`` lie within ``tol`` (0..255 per channel, max norm) of ``color``."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    target = np.round(np.array(to_rgb(color)) * 255).astype(np.int16)
    return int((np.abs(rgb - target).max(axis=-1) <= tol).sum())


def _pr_table() -> pd.DataFrame:
    recall = np.linspace(0, 1, 101)
    return pd.DataFrame(
        {
            "bucket": ["all"] * 101 + ["small"] * 101,
            "recall": np.concatenate([recall, recall]),
            "precision": np.concatenate([1 - recall / 2, 1 - recall]),
            "precision_50": np.concatenate([1 - recall / 4, 1 - recall / 2]),
        }
    )


def _recall_table(sliced: bool) -> pd.DataFrame:
    rs = pd.DataFrame(
        {
            "size_min": [0.0, 16.0, 32.0, 96.0],
            "size_max": [16.0, 32.0, 96.0, float("inf")],
            "gt_instances": [5, 7, 3, 1],
            "matched_full": [1, 4, 3, 1],
            "recall_full": [0.2, 4 / 7, 1.0, 1.0],
        }
    )
    if sliced:
        rs["matched_sliced"] = [3, 6, 2, 1]
        rs["recall_sliced"] = [0.6, 6 / 7, 2 / 3, 1.0]
    return rs


def test_curve_plots_write_pngs_also_when_empty(tmp_path: Path) -> None:
    pr = _pr_table()
    plot_pr_curves(pr, tmp_path / "pr.png")
    _assert_png(tmp_path / "pr.png")
    rs = _recall_table(sliced=True)
    plot_recall_vs_size(rs, tmp_path / "rs.png")
    _assert_png(tmp_path / "rs.png")
    plot_pr_curves(pr.iloc[:0], tmp_path / "pr_empty.png")
    plot_recall_vs_size(rs.iloc[:0], tmp_path / "rs_empty.png")
    _assert_png(tmp_path / "pr_empty.png")
    _assert_png(tmp_path / "rs_empty.png")


def test_pr_curves_draw_one_colour_per_bucket_in_the_table(tmp_path: Path) -> None:
    plot_pr_curves(_pr_table(), tmp_path / "pr.png")
    # Antialiased lines: count pixels near the colour. 'all' is black, like the axes; the two buckets drawn are
    # there and the two absent ones (medium, large) are not.
    assert _pixels(tmp_path / "pr.png", BUCKET_COLORS["small"], tol=40) > 100
    assert _pixels(tmp_path / "pr.png", BUCKET_COLORS["medium"], tol=40) == 0
    assert _pixels(tmp_path / "pr.png", BUCKET_COLORS["large"], tol=40) == 0


def test_recall_vs_size_draws_full_and_sliced(tmp_path: Path) -> None:
    full, sliced = RECALL_SERIES["recall_full"][1], RECALL_SERIES["recall_sliced"][1]
    plot_recall_vs_size(_recall_table(sliced=True), tmp_path / "both.png")
    plot_recall_vs_size(_recall_table(sliced=False), tmp_path / "full.png")
    # Bars are filled with their exact colour: both series in the first figure, only the full one in the other.
    assert _pixels(tmp_path / "both.png", full) > 1000 and _pixels(tmp_path / "both.png", sliced) > 1000
    assert _pixels(tmp_path / "full.png", full) > 1000 and _pixels(tmp_path / "full.png", sliced) == 0
    # The sliced bars (recall 0.6 + 6/7 + 2/3 + 1 = 3.12) are taller in sum than the full ones (0.2 + 4/7 + 1 + 1
    # = 2.77) at the same width: more sliced than full pixels, where a figure with one series swapped fails.
    assert _pixels(tmp_path / "both.png", sliced) > _pixels(tmp_path / "both.png", full)


def test_recall_vs_size_marks_aitod_and_coco_borders(tmp_path: Path) -> None:
    # Nine bins with edges at 8, 16, 32 and 96 px among others: a dotted gray line between bins 1|2 (8 px),
    # 3|4 (16), 5|6 (32) and 7|8 (96), i.e. four lines two bins apart. Bars stop at recall 0.5, so each line is
    # a tall run of gray pixels above them; text and ticks give only short runs per column.
    edges = [0, 4, 8, 12, 16, 24, 32, 64, 96, float("inf")]
    n = len(edges) - 1
    rs = pd.DataFrame({"size_min": edges[:-1], "size_max": edges[1:], "gt_instances": [2] * n, "matched_full": [1] * n})
    rs["recall_full"] = 0.5
    plot_recall_vs_size(rs, tmp_path / "rs.png")
    with Image.open(tmp_path / "rs.png") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    gray_per_column = (np.abs(rgb - 128).max(axis=-1) <= 40).sum(axis=0)
    columns = np.flatnonzero(gray_per_column >= 40)
    lines = [run.mean() for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if run.size]
    assert len(lines) == 4
    gaps = np.diff(lines)
    assert gaps == pytest.approx([gaps[0]] * 3, abs=1.5)  # equally spaced: two bins apart each


# ----------------------------------------------------------------------------- the data behind each figure
def check_object_sizes(sizes: pd.DataFrame, prepare_report: dict[str, Any]) -> None:
    """``object_sizes.csv``: ``size_px`` (rising bin edges from 0) and a count per split summing to its instances."""
    assert list(sizes.columns) == ["size_px", "train", "val"]
    assert len(sizes) > 0 and sizes["size_px"].iloc[0] == 0 and (sizes["size_px"].diff().dropna() > 0).all()
    for split in ("train", "val"):
        assert (sizes[split] >= 0).all()
        assert sizes[split].sum() == prepare_report[split]["instances"] > 0


def check_train_loss(curve: pd.DataFrame, report: dict[str, Any]) -> None:
    """``train_loss.csv``: one row per epoch; ``loss`` is the sum of the loss terms and ends at ``final_loss``;
    no timing column (the same training must rewrite the file byte for byte)."""
    assert list(curve["epoch"]) == list(range(report["epochs"]))
    terms = [c for c in curve.columns if c not in ("epoch", "loss", "lr")]
    assert {"loss", "lr"} <= set(curve.columns) and terms and "images_per_s" not in curve.columns
    values = curve[["loss", *terms]].to_numpy(dtype=float)
    assert np.isfinite(values).all() and (values >= 0).all() and (curve["loss"] > 0).all()
    # The CSV rounds to 6 decimals: the sum of the rounded terms is within a few 1e-6 of the rounded loss.
    np.testing.assert_allclose(curve["loss"], curve[terms].sum(axis=1), rtol=0, atol=1e-5)
    assert curve["loss"].iloc[-1] == pytest.approx(report["final_loss"], abs=1e-6)
    assert (curve["lr"] >= 0).all()


def check_pr_curves(pr: pd.DataFrame, report: dict[str, Any]) -> None:
    """``pr_curves.csv``: 101 recall points per bucket with GT, precision in 0..1 and non-increasing, and the
    mean precision of a bucket equal to the report's AP for it (AP is that mean in COCO's definition)."""
    assert list(pr.columns) == ["bucket", "recall", "precision", "precision_50"]
    with_gt = {b for b in BUCKET_COLORS if report["AP" if b == "all" else f"AP_{b}"] is not None}
    assert set(pr["bucket"]) == with_gt and "all" in with_gt
    for bucket, rows in pr.groupby("bucket"):
        np.testing.assert_allclose(rows["recall"], np.linspace(0, 1, 101), atol=1e-12)
        for col in ("precision", "precision_50"):
            assert rows[col].between(0, 1).all()
            assert (rows[col].diff().dropna() <= 1e-12).all(), f"{bucket} {col} rises with recall"
        assert rows["precision"].mean() == pytest.approx(report["AP" if bucket == "all" else f"AP_{bucket}"])
    assert pr.loc[pr["bucket"] == "all", "precision_50"].mean() == pytest.approx(report["AP50"])


def check_recall_vs_size(rs: pd.DataFrame, report: dict[str, Any]) -> None:
    """``recall_vs_size.csv``: rising bins holding every GT instance of the report, and per series
    (``recall_full``, plus ``recall_sliced`` exactly when the report has a sliced pass) recall = matched / GT."""
    series = ["full", "sliced"] if "sliced" in report else ["full"]
    assert {"size_min", "size_max", "gt_instances"} | {f"recall_{s}" for s in series} <= set(rs.columns)
    assert ("recall_sliced" in rs.columns) == ("sliced" in report)
    assert len(rs) > 0 and (rs["size_min"] < rs["size_max"]).all() and (rs["size_min"].diff().dropna() > 0).all()
    assert rs["gt_instances"].sum() == report["gt_instances"] and (rs["gt_instances"] > 0).all()
    for s in series:
        assert rs[f"recall_{s}"].between(0, 1).all()
        if f"matched_{s}" in rs.columns:
            assert (rs[f"matched_{s}"] <= rs["gt_instances"]).all()
            np.testing.assert_allclose(rs[f"recall_{s}"], rs[f"matched_{s}"] / rs["gt_instances"])


def check_ablation_table(table: pd.DataFrame) -> None:
    """``ablation.csv``: a row per variant and training seed with AP by size, full and ``sliced_``, each in 0..1
    (empty: not run)."""
    ap = [f"{p}AP{s}" for p in ("", "sliced_") for s in ("", "50", "_small", "_medium", "_large")]
    assert {"variant", *ap} <= set(table.columns)
    values = table[ap].to_numpy(dtype=float)
    assert ((values >= 0) & (values <= 1) | np.isnan(values)).all()
    keys = ["variant", *(c for c in table.columns if c == "train.seed")]
    assert not table.duplicated(keys).any()


def check_anchor_report(report: dict[str, Any]) -> None:
    """``anchors.json`` behind ``anchors.png``: BPR and mean best IoU, overall and by size, default and tuned."""
    assert report["num_boxes"] > 0
    for which in ("default", "tuned"):
        for key in ("bpr", "mean_best_iou", "bpr_small", "bpr_medium", "bpr_large"):
            value = report[which][key]
            assert value is None or 0 <= value <= 1, (which, key, value)


# Each figure the README names with a table behind it: the README's words for its series, the CSV under
# reports/, its x column and its series (those `dvc plots` draws must be among them).
README_PLOTS = {
    "object_sizes": ("histogram of sqrt(area) per split", "plots/object_sizes.csv", "size_px", ["train", "val"]),
    "train_loss": ("per-epoch losses in `reports/plots/train_loss.csv`", "plots/train_loss.csv", "epoch", ["loss"]),
    "pr_curves": (
        "`pr_curves.csv/.png` (per size bucket)",
        "plots/evaluate/pr_curves.csv",
        "recall",
        ["precision", "precision_50"],
    ),
    "recall_vs_size": (
        "`recall_vs_size.csv/.png` (full vs sliced)",
        "plots/evaluate/recall_vs_size.csv",
        "size_min",
        ["recall_full", "recall_sliced"],
    ),
}
# The ablation figures (reports/plots/ablation/, written by `sod report` from reports/ablation.csv).
README_ABLATION = "`reports/plots/ablation/`: AP_small/medium/large against"


def _dvc_plots() -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``dvc.yaml``'s plots: the CSV ones by name, and the image paths."""
    named, images = {}, []
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if isinstance(entry, str):
            images.append(entry)
        else:
            ((name, spec),) = entry.items()
            named[name] = spec
    return named, images


def test_readme_and_dvc_yaml_name_the_same_figures_and_series() -> None:
    readme = (REPO / "README.md").read_text()
    named, images = _dvc_plots()
    assert set(named) == set(README_PLOTS)  # every CSV figure dvc draws is checked below, and no other
    for name, (words, csv, x, series) in README_PLOTS.items():
        assert words in readme, f"README no longer says {words!r}: update README_PLOTS"
        assert named[name]["x"] == x
        ((path, ys),) = named[name]["y"].items()
        assert path == f"reports/{csv}"
        assert set([ys] if isinstance(ys, str) else ys) <= set(series)
    for image in images:  # every picture dvc shows is documented
        assert Path(image).stem in readme, image
    assert README_ABLATION in readme


def test_committed_figure_data_has_the_series_the_readme_names() -> None:
    """The committed CSVs hold what the README says they do, consistent with the committed stage reports."""
    check_object_sizes(pd.read_csv(REPORTS / README_PLOTS["object_sizes"][1]), read_json(REPORTS / "prepare.json"))
    check_train_loss(pd.read_csv(REPORTS / README_PLOTS["train_loss"][1]), read_json(REPORTS / "train_detector.json"))
    evaluate = read_json(REPORTS / "evaluate.json")
    check_pr_curves(pd.read_csv(REPORTS / README_PLOTS["pr_curves"][1]), evaluate)
    check_recall_vs_size(pd.read_csv(REPORTS / README_PLOTS["recall_vs_size"][1]), evaluate)
    check_anchor_report(read_json(REPORTS / "anchors.json"))
    check_ablation_table(pd.read_csv(REPORTS / "ablation.csv"))
    for name in README_PLOTS:  # and the PNG drawn from each table is there
        png = REPORTS / README_PLOTS[name][1].replace(".csv", ".png")
        if name != "train_loss":  # dvc draws the loss curve from the CSV; no PNG is written
            _assert_png(png)


@pytest.mark.parametrize("broken", ["no_sliced", "recall_not_matched", "unsorted"])
def test_recall_check_fails_on_broken_tables(broken: str) -> None:
    """The checker itself can fail: each broken table is refused."""
    rs = _recall_table(sliced=True)
    report = {"gt_instances": int(rs["gt_instances"].sum()), "sliced": {}}
    check_recall_vs_size(rs, report)
    if broken == "no_sliced":
        rs = rs.drop(columns=["matched_sliced", "recall_sliced"])
    elif broken == "recall_not_matched":
        rs.loc[0, "recall_sliced"] = 0.5
    else:
        rs = rs.iloc[::-1]
    with pytest.raises(AssertionError):
        check_recall_vs_size(rs, report)


def test_pr_check_fails_when_the_curve_disagrees_with_the_report() -> None:
    pr = _pr_table()
    mean = {b: float(pr.loc[pr["bucket"] == b, "precision"].mean()) for b in ("all", "small")}
    report = {"AP": mean["all"], "AP_small": mean["small"], "AP_medium": None, "AP_large": None}
    report["AP50"] = float(pr.loc[pr["bucket"] == "all", "precision_50"].mean())
    check_pr_curves(pr, report)
    with pytest.raises(AssertionError):
        check_pr_curves(pr, {**report, "AP_small": mean["small"] + 0.01})
    with pytest.raises(AssertionError):
        check_pr_curves(pr, {**report, "AP_medium": 0.1})  # a bucket with GT but no curve


def test_sr_preview_zooms_every_crop_into_its_cell(tmp_path: Path) -> None:
    # Two rows of two 2×2 crops, each crop one colour except a red top-left pixel.
    colours = [[(10, 20, 30), (40, 50, 60)], [(70, 80, 90), (100, 110, 120)]]
    rows = []
    for row_colours in colours:
        row = []
        for colour in row_colours:
            crop = np.empty((2, 2, 3), dtype=np.uint8)
            crop[:] = colour
            crop[0, 0] = (255, 0, 0)
            row.append(crop)
        rows.append(row)
    path = tmp_path / "sr.png"
    plot_sr_preview(rows, ["a", "b"], path)
    first = path.read_bytes()
    plot_sr_preview(rows, ["a", "b"], path)
    assert path.read_bytes() == first
    with Image.open(path) as im:
        img = np.asarray(im.convert("RGB"))
    # 16 px header, then one 128 px cell per crop; nearest zoom: each crop pixel becomes a 64 px block.
    assert img.shape == (16 + 2 * 128, 2 * 128, 3)
    for r, row_colours in enumerate(colours):
        for c, colour in enumerate(row_colours):
            top, left = 16 + r * 128, c * 128
            assert tuple(img[top + 100, left + 100]) == colour
            assert tuple(img[top + 63, left + 63]) == (255, 0, 0) and tuple(img[top + 64, left + 63]) == colour
    header = img[:16]
    assert (header == 255).all(axis=2).mean() > 0.8 and (header < 128).all(axis=2).any()  # white, with titles


def _evaluator(val_json: Path, boxes_xywh: list[list[float]], scores: list[float]) -> CocoEvaluator:
    """A CocoEvaluator (label i = category i) fed one image's detections, all of category 1."""
    ev = CocoEvaluator(val_json, max_dets=300)
    b = torch.tensor(boxes_xywh, dtype=torch.float32)
    out = {
        "boxes": torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1),
        "scores": torch.tensor(scores),
        "labels": torch.ones(len(scores), dtype=torch.int64),
    }
    ev.process([{"image_id": 1}], [out])
    return ev


def test_the_evaluators_tables_pass_the_checks(tmp_path: Path) -> None:
    """The checks on real evaluator output where AP is neither 0 nor 1 and differs from AP50 (the one-epoch
    models of the stage tests score AP 0, where precision and precision_50 are both 0 and a swap goes unseen)."""
    gt = [[10, 10, 20, 20], [100, 100, 16, 24], [200, 200, 50, 50], [50, 250, 120, 120]]  # small, small, medium, large
    anns = [
        {"id": i, "image_id": 1, "category_id": 1, "bbox": b, "area": float(b[2] * b[3]), "iscrowd": 0}
        for i, b in enumerate(gt, start=1)
    ]
    val = tmp_path / "val.json"
    write_json(
        val,
        {
            "images": [{"id": 1, "file_name": "1.png", "width": 400, "height": 400}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "a"}],
        },
    )
    # An exact small box, a small one shifted 4 px (IoU 0.6), the medium box exact at a low score, the large
    # one shifted 30 px (IoU 0.6), and a false positive above them all.
    full = _evaluator(
        val, [[10, 10, 20, 20], [104, 100, 16, 24], [200, 200, 50, 50], [80, 250, 120, 120], [300, 20, 30, 30]],
        [0.9, 0.8, 0.3, 0.5, 0.95],
    )  # fmt: skip
    sliced = _evaluator(val, [[10, 10, 20, 20], [100, 100, 16, 24], [300, 20, 30, 30]], [0.9, 0.8, 0.95])
    report = full.evaluate()
    assert 0 < report["AP"] < report["AP50"] < 1
    check_pr_curves(full.pr_curves(), report)
    rs = recall_vs_size_table(full.recall_vs_size(), sliced.recall_vs_size())
    check_recall_vs_size(rs, {**report, "sliced": sliced.evaluate()})
    # Hand-counted at IoU 0.5: full finds all four GT; sliced finds the two small ones only.
    assert rs["gt_instances"].sum() == 4
    assert rs["matched_full"].sum() == 4 and rs["matched_sliced"].sum() == 2
    with pytest.raises(AssertionError):  # precision at IoU 0.5 in place of 0.50:0.95 is refused
        check_pr_curves(full.pr_curves().assign(precision=lambda t: t["precision_50"]), report)
